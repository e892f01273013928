/**
 * Exponential backoff, the one implementation: the S3 backend's request retries, the daemon
 * client's, and a replica's reconnects all wait this long.
 */

/** How a retry loop backs off. */
export interface Backoff {
  /** The first delay, in milliseconds. */
  readonly baseMs: number;
  /** No delay is longer than this. */
  readonly maxMs: number;
  /**
   * How much of each delay is random: 1 is "full jitter" (anywhere from 0 to the delay), 0.5
   * half of it, 0 none. Jitter keeps many clients that failed together from retrying together.
   */
  readonly jitter: number;
}

/** The delay before retry number `attempt` (1 for the first retry), in milliseconds. */
export function backoffDelay(attempt: number, policy: Backoff, random: () => number = Math.random): number {
  const delay = Math.min(policy.baseMs * 2 ** Math.max(0, attempt - 1), policy.maxMs);
  return delay * (1 - policy.jitter) + random() * delay * policy.jitter;
}

/** Waits `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
