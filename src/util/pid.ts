/**
 * Whether a process still runs, for locks and temp files that carry their owner's PID.
 */

/** True when a process with this PID exists on this host (or is this process). */
export function isProcessAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
