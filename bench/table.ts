/**
 * What every benchmark shares: a results row, percentiles, and the table printer.
 */

/** One line of the results table: a target measured against its limit in the same run. */
export interface Row {
  target: string;
  measured: string;
  limit: string;
  ratio: number;
  goal: string;
  ok: boolean;
  /**
   * CPU time (user + system) of the same work beside the wall figures above, where the row
   * measured it; printed in the CPU columns. `ok` says whether the row met its goal on what it
   * judges (for rows with CPU figures, both ratios).
   */
  cpu?: { measured: string; limit: string; ratio: number };
}

/** The p-th percentile of `xs`. */
export function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

/** Milliseconds for people. */
export function ms(x: number): string {
  return x < 1 ? `${(x * 1000).toFixed(0)} µs` : x < 1000 ? `${x.toFixed(1)} ms` : `${(x / 1000).toFixed(2)} s`;
}

/** Runs `fn` and returns how long it took, in ms. */
export async function timed(fn: () => Promise<unknown> | unknown): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/**
 * Prints rows as a Markdown table on stdout, ready for the README's Performance table. The CPU
 * columns appear when a row has CPU figures ("" in the rows without).
 */
export function printTable(rows: readonly Row[]): void {
  const withCpu = rows.some((r) => r.cpu);
  const header = ["target", "measured", "limit (same run)", "ratio", ...(withCpu ? ["CPU", "CPU limit", "CPU ratio"] : []), "goal", ""];
  const body = rows.map((r) => [
    r.target,
    r.measured,
    r.limit,
    r.ratio.toFixed(2),
    ...(withCpu ? (r.cpu ? [r.cpu.measured, r.cpu.limit, r.cpu.ratio.toFixed(2)] : ["", "", ""]) : []),
    r.goal,
    r.ok ? "ok" : "MISSED",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  process.stdout.write(`${line(header)}\n|${widths.map((w) => "-".repeat(w + 2)).join("|")}|\n`);
  for (const b of body) process.stdout.write(`${line(b)}\n`);
}
