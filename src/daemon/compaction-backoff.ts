/**
 * How a database's scheduled compactions back off after failures: a compaction that failed (a
 * full disk, a backend that is down) is not retried at the next change or tick, but after an
 * exponential, capped delay (util/backoff.ts), which a success resets.
 */
import { backoffDelay, type Backoff } from "../util/backoff.js";

/** 10 s, 20 s, 40 s, … up to 30 min; a quarter of each delay random, so databases spread out. */
export const COMPACTION_BACKOFF: Backoff = { baseMs: 10_000, maxMs: 30 * 60_000, jitter: 0.25 };

/** What status reports about failed compactions. */
export interface CompactionRetry {
  /** Compactions that failed in a row; 0 after a success. */
  readonly failures: number;
  /** When the scheduler tries again (ISO time); null when nothing failed. */
  readonly nextAttemptAt: string | null;
}

/** The back-off state of one database's compaction scheduler. */
export class CompactionBackoff {
  readonly #policy: Backoff;
  readonly #random: () => number;
  #failures = 0;
  #nextAt: number | null = null;

  constructor(policy: Backoff = COMPACTION_BACKOFF, random: () => number = Math.random) {
    this.#policy = policy;
    this.#random = random;
  }

  /** Records a failure at `now`; returns when the next attempt may start (ms since the epoch). */
  failed(now: number): number {
    this.#failures++;
    this.#nextAt = now + Math.round(backoffDelay(this.#failures, this.#policy, this.#random));
    return this.#nextAt;
  }

  /** Records a success: the next failure starts from the first delay again. */
  succeeded(): void {
    this.#failures = 0;
    this.#nextAt = null;
  }

  /** The earliest time a scheduled compaction may start, or null when it need not wait. */
  get nextAt(): number | null {
    return this.#nextAt;
  }

  /** True while a scheduled compaction must wait. */
  waiting(now: number): boolean {
    return this.#nextAt !== null && now < this.#nextAt;
  }

  get failures(): number {
    return this.#failures;
  }

  /** For status. */
  status(): CompactionRetry {
    return { failures: this.#failures, nextAttemptAt: this.#nextAt === null ? null : new Date(this.#nextAt).toISOString() };
  }
}
