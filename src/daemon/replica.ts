/**
 * A replica: a second backend fed asynchronously from a database's primary.
 *
 * The primary acknowledges changes; the feeder copies them afterwards, in version order, by
 * reading them back from the primary, so memory stays bounded however far behind a replica
 * falls. It makes the replica follow whatever the primary did:
 *
 * - new changes are applied under the version rules, so a change the primary rewound and
 *   redid replaces the replica's copy (rewind-then-append);
 * - a change the primary rewound and did not redo is rewound on the replica too;
 * - when the primary compacts, the replica installs the same base snapshot;
 * - a replica that is down is retried with backoff and catches up when it returns; one that
 *   fell behind the primary's oldest version starts again from the primary's base.
 *
 * Requests: a pass writes the changes it finds in segments, each many changes in one write
 * (`Backend.addChanges`: one object on S3), of up to {@link SEGMENT_BYTES}; and passes start at
 * most once per interval (default 1 s). A replica in step costs one PUT per interval however
 * many changes the primary acknowledges, and a catch-up after an outage a few large objects.
 */
import { backoffDelay, type Backoff } from "../util/backoff.js";
import type { Backend, BackendOptions, BackendStatus, ChangeToStore } from "../backup/backup.js";
import type { Statement } from "../model/change.js";
import { openOrCreateBackend } from "../backup/registry.js";
import { TidemarkError } from "../util/errors.js";
import { applyCopy } from "../ops/ingest.js";
import type { Logger } from "../util/logger.js";

/** How often a replica with nothing to do checks again. */
const IDLE_MS = 1_000;
/** The least time between the starts of two passes, by default. */
export const REPLICA_INTERVAL_MS = 1_000;
/** A segment is written once its changes' statements reach about this many bytes, or this many changes. */
const SEGMENT_BYTES = 4 << 20;
const SEGMENT_CHANGES = 10_000;
/** Retry delays after a failure: doubling from half a second, up to 30 s. */
const BACKOFF: Backoff = { baseMs: 500, maxMs: 30_000, jitter: 0 };

/** Where a replica stands. */
export interface ReplicaStatus {
  readonly location: string;
  /** The replica's head; -1 until it has been opened. */
  readonly version: number;
  /** Versions the replica is behind the primary. */
  readonly lagVersions: number;
  /** How much older the replica's head is than the primary's, in seconds. */
  readonly lagSeconds: number;
  /** The last failure, until the next success. */
  readonly error?: { readonly code: string; readonly message: string; readonly at: string };
}

/** What a feeder needs from its database. */
export interface ReplicaDeps {
  readonly log: Logger;
  /** How the replica backend is opened: the primary's codec and keys, group commit, retry metrics. */
  readonly backendOptions?: Omit<BackendOptions, "mode" | "log">;
  /** Called after every sync with the replica's status (for metrics). */
  readonly onStatus?: (status: ReplicaStatus) => void;
  /** The least time between two passes (ms): at most one write per interval while in step. */
  readonly intervalMs?: number;
}

/** Feeds one replica from a primary. */
export class ReplicaFeeder {
  readonly location: string;
  readonly #primary: Backend;
  readonly #deps: ReplicaDeps;
  readonly #log: Logger;
  #replica: Backend | null = null;
  /** The replica's head and its timestamp, as of the last success; -1 before the first. */
  #version = -1;
  #timestamp: number | undefined;
  #error: ReplicaStatus["error"] | undefined;
  #wake: (() => void) | null = null;
  #dirty = true;
  #closed = false;
  #loop: Promise<void> | null = null;

  constructor(primary: Backend, location: string, deps: ReplicaDeps) {
    this.#primary = primary;
    this.location = location;
    this.#deps = deps;
    this.#log = deps.log.child({ component: "replica", replica: location });
  }

  /** Starts feeding in the background. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Tells the feeder the primary changed. Cheap; call it on every change. */
  notify(): void {
    this.#dirty = true;
    this.#wake?.();
  }

  /** Where the replica stands against the primary now. */
  async status(): Promise<ReplicaStatus> {
    const primary = await this.#primary.status();
    const behind = this.#version < 0 ? primary.version : Math.max(0, primary.version - this.#version);
    // A replica that holds nothing yet is behind by the primary's live generation, all it will copy.
    const since = this.#timestamp ?? primary.generations.at(-1)?.firstTimestamp ?? primary.headTimestamp ?? 0;
    const seconds = behind === 0 ? 0 : Math.max(0, ((primary.headTimestamp ?? 0) - since) / 1000);
    return {
      location: this.location,
      version: this.#version,
      lagVersions: behind,
      lagSeconds: seconds,
      ...(this.#error && { error: this.#error }),
    };
  }

  /** Records where the replica is and reports the status. */
  async #publish(version?: number, timestamp?: number): Promise<void> {
    if (version !== undefined) {
      this.#version = version;
      this.#timestamp = timestamp;
    }
    if (this.#deps.onStatus) this.#deps.onStatus(await this.status());
  }

  /** Stops after the change in flight and closes the replica. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#wake?.();
    await this.#loop;
    await this.#replica?.close();
    this.#replica = null;
  }

  async #run(): Promise<void> {
    let failures = 0;
    const interval = this.#deps.intervalMs ?? REPLICA_INTERVAL_MS;
    let lastPass = -Infinity;
    while (!this.#closed) {
      try {
        // Changes that arrive meanwhile wait for the next pass, and go in one segment.
        const wait = lastPass + interval - performance.now();
        if (wait > 0) await this.#sleep(wait, false);
        if (this.#closed) return;
        lastPass = performance.now();
        this.#dirty = false;
        this.#replica ??= (await openOrCreateBackend(this.location, this.#backendOptions())).backend;
        await this.#sync();
        this.#error = undefined;
        await this.#publish();
        failures = 0;
        if (!this.#dirty) await this.#sleep(IDLE_MS);
      } catch (err) {
        failures++;
        const e = err instanceof TidemarkError ? err : new TidemarkError("E_INTERNAL", (err as Error).message, { cause: err });
        this.#error = { code: e.code, message: e.message, at: new Date().toISOString() };
        await this.#publish().catch(() => {});
        this.#log.warn({ code: e.code, error: e.message, failures }, "replica is not in sync; will retry");
        this.#log.debug({ err: e }, "replica failure");
        // A replica whose handle may be broken is reopened on the next try.
        if (failures % 3 === 0 && this.#replica) {
          await this.#replica.close().catch(() => {});
          this.#replica = null;
        }
        await this.#sleep(backoffDelay(failures, BACKOFF));
      }
    }
  }

  #backendOptions(): Omit<BackendOptions, "mode"> {
    return { ...this.#deps.backendOptions, log: this.#log };
  }

  /** One pass: undo what the primary undid, copy what it has, install its base. */
  async #sync(): Promise<void> {
    const replica = this.#replica!;
    const primary = await this.#primary.status();
    let mine = await replica.status();

    if (mine.version > primary.version || (mine.version === primary.version && mine.version > 0 && mine.headTimestamp !== primary.headTimestamp)) {
      // The primary rewound a change the replica already had.
      if (mine.prevVersion === null || mine.version > primary.version + 1) throw diverged(this.location, mine, primary);
      await replica.rewind();
      this.#log.info({ version: mine.version }, "rewound a change the primary rewound");
      mine = await replica.status();
    }

    if (mine.version < primary.version) {
      // Copy from right after the replica's head when one generation of the primary holds
      // everything from there (the live one; on S3 also an older one, whose changes run to
      // the head). Otherwise, and for an empty replica, from the primary's live base: a replica
      // follows the live generation, and the older ones the primary retains stay there.
      const next = mine.version + 1;
      const inOne = mine.version > 0 && primary.generations.some((g) => g.firstVersion <= next && g.lastVersion >= primary.version);
      const from = inOne ? next : (primary.generations.at(-1)?.firstVersion ?? primary.firstVersion);
      let segment: ChangeToStore[] = [];
      let bytes = 0;
      const flush = async () => {
        if (segment.length === 0) return;
        await replica.addChanges(segment);
        this.#version = replica.head().version;
        this.#timestamp = segment.at(-1)!.timestamp;
        segment = [];
        bytes = 0;
      };
      for await (const change of this.#primary.streamChanges({ from, to: primary.version })) {
        if (this.#closed) return flush();
        // The stream starts at the newest base at or before `from`, which the replica may hold already.
        if (change.version <= mine.version) continue;
        // A plain change right after the head goes in the segment; anything else (a base, a
        // redo the version rules must rewind first) is applied alone, after the segment.
        if (!change.snapshot && !change.continuation && change.version === replica.head().version + 1 + segment.length) {
          segment.push({ version: change.version, timestamp: change.timestamp, ...(change.transaction && { transaction: change.transaction }), ...(change.captured && { captured: change.captured }) });
          bytes += change.captured ? change.captured.pages.length * change.captured.pageSize : statementBytes(change.transaction ?? []);
          if (bytes >= SEGMENT_BYTES || segment.length >= SEGMENT_CHANGES) await flush();
          continue;
        }
        await flush();
        await applyCopy(replica, change);
        this.#version = replica.head().version;
        this.#timestamp = change.timestamp;
      }
      await flush();
      mine = await replica.status();
    }

    // The primary compacted: install the same base once the replica holds it settled.
    const settled = mine.prevVersion === null ? mine.version : mine.version - 1;
    if (primary.baseVersion > mine.baseVersion && primary.baseVersion <= settled && primary.baseVersion >= mine.firstVersion) {
      const base = await first(this.#primary.streamChanges({ from: primary.baseVersion, to: primary.baseVersion }));
      if (base?.snapshot && base.version === primary.baseVersion) {
        await replica.compact({ version: base.version, timestamp: base.timestamp, snapshot: () => base.snapshot!.open() });
        this.#log.info({ baseVersion: base.version }, "installed the primary's new base");
        mine = await replica.status();
      }
    }
    await this.#publish(mine.version, mine.headTimestamp);
  }

  /** Sleeps `ms`; `notify` (when `wakes`) and `close` end it early. */
  #sleep(ms: number, wakes = true): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      timer.unref();
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = () => {
        if (wakes || this.#closed) {
          this.#wake = null;
          done();
        }
      };
    });
  }
}

async function first<T>(items: AsyncIterable<T>): Promise<T | undefined> {
  for await (const item of items) return item;
  return undefined;
}

function diverged(location: string, mine: BackendStatus, primary: BackendStatus): TidemarkError {
  return new TidemarkError(
    "E_STALE",
    `replica ${location} is at version ${mine.version}, which the primary (at ${primary.version}) does not hold and it cannot rewind`,
    { hint: `re-seed it: tidemark copy <primary> ${location} --force` },
  );
}

/** About how many bytes a change's statements take: what a segment's size is judged by. */
function statementBytes(statements: readonly Statement[]): number {
  let n = 0;
  for (const st of statements) {
    if (typeof st === "string") n += st.length;
    else {
      n += st.sql.length;
      for (const p of Object.values(st.params ?? {}) as unknown[]) n += typeof p === "string" ? p.length : p instanceof Uint8Array ? p.byteLength : 8;
    }
  }
  return n;
}
