/**
 * Progress for long commands (restore, compact, verify, copy): a bar drawn with cli-progress on a
 * terminal, naming the phase it is in; elsewhere (a pipe, a log file, a unit's journal) a plain
 * line every few seconds; nothing with --quiet.
 */
import { createRequire } from "node:module";
import type CliProgress from "cli-progress";

/** cli-progress, loaded when a bar is drawn (on a terminal only). */
function loadCliProgress(): typeof CliProgress {
  return createRequire(import.meta.url)("cli-progress") as typeof CliProgress;
}

/** Receives progress: units done and units in all. */
export type ProgressFn = (done: number, total: number) => void;

/** A progress display; `stop()` clears it and gives the terminal its cursor back. */
export interface Progress {
  readonly update: ProgressFn;
  /** Names the phase now running ("replaying", "checking integrity", …). */
  phase(name: string): void;
  stop(): void;
}

/** Seconds between the plain lines printed when stderr is not a terminal (TIDEMARK_PROGRESS_SECONDS overrides). */
export const PLAIN_EVERY_SECONDS = 5;

function plainEveryMs(): number {
  const given = Number(process.env.TIDEMARK_PROGRESS_SECONDS);
  return (Number.isFinite(given) && given > 0 ? given : PLAIN_EVERY_SECONDS) * 1000;
}

const NOTHING: Progress = { update() {}, phase() {}, stop() {} };

/**
 * Returns a progress bar on stderr when it is a terminal, plain lines when it is not, and a
 * display that does nothing when `quiet` is true.
 */
export function createProgress(label: string, unit: string, quiet = false): Progress {
  if (quiet) return NOTHING;
  return process.stderr.isTTY ? terminalProgress(label, unit) : plainProgress(label, unit);
}

function terminalProgress(label: string, unit: string): Progress {
  const cliProgress = loadCliProgress();
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | {rate}/s | ETA {eta_formatted} | {phase}`,
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
  // Once stopped (an interrupt, say), late updates from work still unwinding draw nothing.
  let stopped = false;
  let phase = "reading";
  return {
    update(done, total) {
      if (stopped) return;
      const seconds = (performance.now() - started) / 1000;
      const rate = seconds > 0 ? Math.round(done / seconds) : 0;
      if (!running) {
        bar.start(total, done, { rate, phase });
        running = true;
      } else {
        bar.setTotal(total);
        bar.update(done, { rate, phase });
      }
    },
    phase(name) {
      phase = name;
      if (running) bar.update({ phase });
    },
    stop() {
      if (running) bar.stop();
      running = false;
      stopped = true;
    },
  };
}

function plainProgress(label: string, unit: string): Progress {
  let done = 0;
  let total = 0;
  let phase = "reading";
  const started = performance.now();
  const timer = setInterval(() => {
    const seconds = Math.round((performance.now() - started) / 1000);
    const pct = total > 0 ? ` (${Math.floor((done / total) * 100)}%)` : "";
    process.stderr.write(`${label}: ${phase}, ${done}/${total} ${unit}${pct}, ${seconds} s\n`);
  }, plainEveryMs());
  timer.unref();
  return {
    update(d, t) {
      done = d;
      total = t;
    },
    phase(name) {
      phase = name;
    },
    stop() {
      clearInterval(timer);
    },
  };
}
