/**
 * A token bucket per client, for the daemon's expensive endpoints (backup downloads and
 * verify-now, each a full restore): a client may make `burst` requests at once, then one per
 * `everyMs`.
 */

/** How many requests a client may make at once, and how soon it earns another. */
export interface RateLimit {
  /** Requests a client may make back to back; 0 turns the limit off. */
  readonly burst: number;
  /** Milliseconds in which a client earns one more request, up to `burst`. */
  readonly everyMs: number;
}

/** The default: a burst of 5, then one a minute. */
export const DEFAULT_RATE_LIMIT: RateLimit = Object.freeze({ burst: 5, everyMs: 60_000 });

/** Buckets kept before the full ones (clients that earned every token back) are forgotten. */
const MAX_BUCKETS = 10_000;

/** Token buckets, one per client key (a remote address, or the Unix socket). */
export class TokenBuckets {
  readonly #limit: RateLimit;
  /** Per client: the credit earned, in milliseconds (one request costs `everyMs`), and when. */
  readonly #buckets = new Map<string, { credit: number; at: number }>();

  constructor(limit: RateLimit) {
    this.#limit = limit;
  }

  /** The limit these buckets apply. */
  get limit(): RateLimit {
    return this.#limit;
  }

  /**
   * Takes a token for `client`. Returns 0 when the request may go ahead, else the milliseconds
   * until the client earns its next token (what Retry-After says).
   */
  take(client: string, now = Date.now()): number {
    const { burst, everyMs } = this.#limit;
    if (burst <= 0) return 0;
    const b = this.#refilled(client, now);
    this.#buckets.set(client, b);
    if (b.credit < everyMs) return everyMs - b.credit;
    b.credit -= everyMs;
    if (this.#buckets.size > MAX_BUCKETS) this.#forgetFull(now);
    return 0;
  }

  #refilled(client: string, now: number): { credit: number; at: number } {
    const full = this.#limit.burst * this.#limit.everyMs;
    const b = this.#buckets.get(client);
    if (!b) return { credit: full, at: now };
    return { credit: Math.min(full, b.credit + Math.max(0, now - b.at)), at: now };
  }

  #forgetFull(now: number): void {
    const full = this.#limit.burst * this.#limit.everyMs;
    for (const key of [...this.#buckets.keys()]) {
      if (this.#refilled(key, now).credit >= full) this.#buckets.delete(key);
    }
  }
}
