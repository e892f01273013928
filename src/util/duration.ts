/**
 * The duration grammar, the one implementation: the daemon's configuration and the CLI's flags
 * both take a decimal number and a unit, `100ms`, `30s`, `15m`, `6h` or `14d`.
 */
import { InputError } from "./errors.js";

const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** Says whether `text` is a duration that {@link parseDuration} accepts. */
export function isDuration(text: string): boolean {
  return DURATION_RE.test(text);
}

/**
 * Parses a duration such as `30s`, `15m`, `6h`, `14d` or `100ms` into whole milliseconds
 * (`0.7d` is 60,480,000, not 60,479,999.99…); throws InputError otherwise.
 */
export function parseDuration(text: string): number {
  const m = DURATION_RE.exec(text);
  if (!m) {
    throw new InputError(`expected a duration like 30s, 15m, 6h or 1d, got ${JSON.stringify(text)}`, {
      hint: "write a number and one of the units ms, s, m, h or d",
    });
  }
  return Math.round(Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS]);
}
