/**
 * The duration grammar, the one implementation: the daemon's configuration and the CLI's flags
 * both take a decimal number and a unit, `100ms`, `30s`, `15m`, `6h` or `14d`, or several of
 * them in a row from the largest unit down, `1h30m` or `1d12h`.
 */
import { InputError } from "./errors.js";

const PART_RE = /(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)/y;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
type Unit = keyof typeof UNIT_MS;

/** The parts of `text` (number and unit), or null when it is not a duration. */
function parts(text: string): [number, Unit][] | null {
  const out: [number, Unit][] = [];
  const re = new RegExp(PART_RE.source, "y");
  let at = 0;
  while (at < text.length) {
    re.lastIndex = at;
    const m = re.exec(text);
    if (!m) return null;
    const unit = m[2] as Unit;
    // Each unit once, from the largest down: "30m1h" or "1h1h" is more likely a typo than meant.
    if (out.length > 0 && UNIT_MS[out[out.length - 1]![1]] <= UNIT_MS[unit]) return null;
    out.push([Number(m[1]), unit]);
    at = re.lastIndex;
  }
  return out.length > 0 ? out : null;
}

/** Says whether `text` is a duration that {@link parseDuration} accepts. */
export function isDuration(text: string): boolean {
  return parts(text) !== null;
}

/**
 * Parses a duration such as `30s`, `15m`, `6h`, `14d`, `100ms` or `1h30m` into whole
 * milliseconds (`0.7d` is 60,480,000, not 60,479,999.99…); throws InputError otherwise.
 */
export function parseDuration(text: string): number {
  const p = parts(text);
  if (!p) {
    throw new InputError(`expected a duration like 30s, 15m, 6h, 1d or 1h30m, got ${JSON.stringify(text)}`, {
      hint: "write a number and one of the units ms, s, m, h or d; several go largest first, like 1h30m",
    });
  }
  return Math.round(p.reduce((sum, [n, unit]) => sum + n * UNIT_MS[unit], 0));
}

/** Formats a duration in the largest unit that divides it (7d, 36h, 90m, 45s), as flags take it. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
