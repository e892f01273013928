/**
 * Ctrl-C and SIGTERM for the long commands (restore, compact, verify, copy): the work is
 * aborted through its AbortSignal, so that it unwinds as any failure does (temp files removed,
 * a writer lock released, a partial copy emptied), the progress bar is stopped and the cursor
 * shown again, and the CLI prints `interrupted; nothing was written to <dest>` and exits 130.
 */
import { InterruptedError } from "../util/errors.js";
import type { Progress } from "./progress.js";

const SIGNALS = ["SIGINT", "SIGTERM"] as const;

/**
 * Runs `work` with an AbortSignal that SIGINT or SIGTERM aborts; an aborted run rejects with
 * an InterruptedError naming `dest`. A second signal exits at once (still 130).
 */
export async function interruptible<T>(dest: string, progress: Progress, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = () => {
    progress.stop();
    if (controller.signal.aborted) {
      process.stderr.write(`interrupted again; exiting at once: check ${dest} for leftovers\n`);
      process.exit(130);
    }
    controller.abort(new InterruptedError(dest));
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  try {
    return await work(controller.signal);
  } catch (err) {
    // Whatever the work rejected with once aborted, the interrupt is what happened.
    if (controller.signal.aborted) throw controller.signal.reason;
    throw err;
  } finally {
    for (const s of SIGNALS) process.off(s, onSignal);
    progress.stop();
  }
}
