/**
 * When to compact: a pure function of the policy, the backup's state and the time, so that the
 * scheduler can be tested without timers.
 */

/** Compaction policy of one database, with durations and sizes in numbers. */
export interface CompactionPolicy {
  readonly everyChanges?: number;
  /** Milliseconds. */
  readonly everyMs?: number;
  readonly logRatio?: number;
}

/** The ratio trigger ignores logs smaller than this, so that tiny backups do not churn. */
export const MIN_LOG_BYTES_FOR_RATIO = 1 << 20;

/** What the scheduler knows about one backup. */
export interface CompactionState {
  /** Changes stored since the last compaction (or since the daemon started). */
  readonly changesSince: number;
  /** When the last compaction finished, or when the daemon started: ms since the epoch. */
  readonly lastAt: number;
  /** Bytes of the live log. */
  readonly logBytes: number;
  /** Bytes of the live base snapshot (0 when the log starts from an empty database). */
  readonly snapshotBytes: number;
  /** Live change records; compaction needs more than the base and the last change. */
  readonly records: number;
}

/** Returns why a compaction is due now, or null when none is. */
export function compactionDue(policy: CompactionPolicy, state: CompactionState, now: number): string | null {
  if (state.records <= 2) return null;
  if (policy.everyChanges !== undefined && state.changesSince >= policy.everyChanges) {
    return `${state.changesSince} changes since the last compaction (policy: every ${policy.everyChanges})`;
  }
  if (policy.everyMs !== undefined && state.changesSince > 0 && now - state.lastAt >= policy.everyMs) {
    return `${Math.round((now - state.lastAt) / 1000)} s since the last compaction (policy: every ${policy.everyMs / 1000} s)`;
  }
  if (
    policy.logRatio !== undefined &&
    state.logBytes > MIN_LOG_BYTES_FOR_RATIO &&
    state.logBytes > policy.logRatio * Math.max(state.snapshotBytes, MIN_LOG_BYTES_FOR_RATIO)
  ) {
    return `log is ${state.logBytes} bytes, over ${policy.logRatio} x the ${state.snapshotBytes}-byte base (policy: logRatio ${policy.logRatio})`;
  }
  return null;
}

/** When the time trigger will next fire (ms since the epoch), or null when the policy has none. */
export function nextCompactionAt(now: number, policy: CompactionPolicy, state: CompactionState): number | null {
  if (policy.everyMs === undefined) return null;
  return Math.max(now, state.lastAt + policy.everyMs);
}
