/**
 * Retention: which superseded generations (older bases and the changes after them) a
 * compaction keeps, so that restores can still reach older versions and times.
 *
 * A pure function of the generations, the policy and the time, like the compaction policy.
 */

/** How much history to keep besides the live generation. */
export interface RetentionPolicy {
  /** Keep this many superseded bases (with their changes). */
  readonly bases?: number;
  /** Keep what is needed to restore any moment of the last this-many milliseconds. */
  readonly maxAgeMs?: number;
}

/**
 * The retention of a backup that has no setting of its own: any moment of the last 24 hours
 * can be restored (with the bases that needs), as Litestream keeps by default.
 * `{ maxAgeMs: 0 }` keeps the live generation only.
 */
export const DEFAULT_RETENTION: RetentionPolicy = Object.freeze({ maxAgeMs: 24 * 3_600_000 });

/** One generation, oldest first: a base and the changes after it. */
export interface GenerationInfo<Id> {
  readonly id: Id;
  /** When the generation's first change was made; undefined when unknown (sealed without a key). */
  readonly baseTimestamp: number | undefined;
}

/**
 * Returns the ids of the generations to keep, given oldest first with the live one last. The
 * live generation is always kept. A superseded generation is kept when it is one of the
 * `bases` most recent ones, or when it holds times inside the `maxAgeMs` window: generation i
 * alone covers the times from its base until generation i+1's base, so it is kept while that
 * next base is younger than the window. A generation whose times are unknown is kept
 * (unless `maxAgeMs` is 0: no history by time at all).
 */
export function retainedGenerations<Id>(generations: readonly GenerationInfo<Id>[], policy: RetentionPolicy, now: number): Set<Id> {
  const keep = new Set<Id>();
  const n = generations.length;
  if (n === 0) return keep;
  keep.add(generations[n - 1]!.id);
  const superseded = generations.slice(0, -1);
  const bases = policy.bases ?? 0;
  superseded.slice(Math.max(0, superseded.length - bases)).forEach((g) => keep.add(g.id));
  if (policy.maxAgeMs) {
    superseded.forEach((g, i) => {
      const nextBase = generations[i + 1]!.baseTimestamp;
      if (nextBase === undefined || nextBase >= now - policy.maxAgeMs!) keep.add(g.id);
    });
  }
  return keep;
}
