/**
 * Progress bars for long commands (restore, compact, verify, copy), drawn with cli-progress on a
 * terminal and silent anywhere else or with --quiet.
 */
import cliProgress from "cli-progress";

/** Receives progress: units done and units in all. */
export type ProgressFn = (done: number, total: number) => void;

/** A progress display; `stop()` clears it. */
export interface Progress {
  readonly update: ProgressFn;
  stop(): void;
}

/**
 * Returns a progress bar on stderr when it is a terminal and `quiet` is false; otherwise a
 * display that does nothing.
 */
export function createProgress(label: string, unit: string, quiet = false): Progress {
  if (quiet || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | {rate}/s | ETA {eta_formatted}`,
      stream: process.stderr,
      clearOnComplete: true,
      hideCursor: true,
      etaBuffer: 200,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  const started = performance.now();
  let running = false;
  return {
    update(done, total) {
      const seconds = (performance.now() - started) / 1000;
      const rate = seconds > 0 ? Math.round(done / seconds) : 0;
      if (!running) {
        bar.start(total, done, { rate });
        running = true;
      } else {
        bar.setTotal(total);
        bar.update(done, { rate });
      }
    },
    stop() {
      if (running) bar.stop();
      running = false;
    },
  };
}
