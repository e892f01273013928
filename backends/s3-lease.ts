/**
 * The single-writer lease of an S3 backup: one object, written with conditional PUTs.
 *
 * - Acquire: PUT with `If-None-Match: *`, which succeeds only if there is no lease.
 * - A lease that has expired, or whose holder is a process on this host that is gone, is
 *   taken over with `If-Match: <its ETag>`, so that two contenders cannot both win.
 * - Renew: PUT with `If-Match: <our ETag>` every third of the lease's life. A renewal refused
 *   because another writer's lease is there means this writer lost the backup: it stops
 *   writing. A renewal refused while the lease object still holds our own id (a retried PUT
 *   whose first attempt landed) is ours: the lease adopts the new ETag.
 * - Every record carries a random id: a writer never mistakes its own lease for another's,
 *   whatever its PID.
 * - Fencing: {@link Lease.ensureValid} is called before each write and before each ack. The
 *   lease is valid for `ttl - margin` from the moment its last successful renewal was *sent*,
 *   on this process's monotonic clock; once that has passed (the process was paused, the
 *   store unreachable) it must renew first, and a renewal that finds another writer fails the
 *   write with E_LOCKED. Another writer takes the lease over only once the record's
 *   `expiresAt` has passed on its own clock, `margin` later than this writer stops trusting it.
 *
 * How the server treats conditions is probed at open (`backends/s3-conditions.ts`): which ETag
 * form `If-Match` accepts (AWS: quoted; Ceph RGW: unquoted), and whether conditions are
 * honoured at all. The store passed in here hides that.
 */
import os from "node:os";
import { performance } from "node:perf_hooks";
import { randomBytes } from "node:crypto";
import { TidemarkError, isProcessAlive, type Logger } from "../src/backend-kit.js";

/** How long a lease lasts without renewal. */
export const LEASE_TTL_MS = 30_000;

/** What a lease object says. */
export interface LeaseRecord {
  readonly id: string;
  readonly pid: number;
  readonly host: string;
  /** Wall-clock time (ms since the epoch) after which another writer may take the lease. */
  readonly expiresAt: number;
  /** What the holder found the server does with conditional writes (for `status`). */
  readonly fencing?: string;
}

/** The conditional operations the lease needs from the store. */
export interface LeaseStore {
  /** The lease and its ETag, or null if there is none. A record that does not parse is null. */
  get(): Promise<{ record: LeaseRecord | null; etag: string } | null>;
  /** Writes only if there is no lease; returns the new ETag, or null if one exists (412). */
  putIfAbsent(record: LeaseRecord): Promise<string | null>;
  /** Writes only if the lease still has `etag`; returns the new ETag, or null if it changed (412). */
  putIfMatch(record: LeaseRecord, etag: string): Promise<string | null>;
  /** Deletes the lease. */
  delete(): Promise<void>;
}

/** Lease timing; `ttlMs` defaults to {@link LEASE_TTL_MS}. */
export interface LeaseTiming {
  readonly ttlMs?: number;
  /** How long before the record's expiry this writer stops trusting it: room for clock skew. */
  readonly marginMs?: number;
}

/** A writer lease held by this process. */
export class Lease {
  readonly #store: LeaseStore;
  readonly #where: string;
  readonly #log: Logger;
  readonly #ttl: number;
  readonly #margin: number;
  readonly #fencing: string | undefined;
  readonly #id = randomBytes(8).toString("hex");
  #etag: string | null = null;
  #timer: NodeJS.Timeout | null = null;
  #lost: TidemarkError | null = null;
  /** performance.now() until which the lease is ours for certain. */
  #validUntil = 0;
  #renewing: Promise<void> | null = null;

  constructor(store: LeaseStore, where: string, log: Logger, timing: LeaseTiming = {}, fencing?: string) {
    this.#store = store;
    this.#where = where;
    this.#log = log;
    this.#ttl = timing.ttlMs ?? LEASE_TTL_MS;
    this.#margin = timing.marginMs ?? Math.min(5000, Math.floor(this.#ttl / 5));
    this.#fencing = fencing;
  }

  /** This lease's id, as its record carries it. */
  get id(): string {
    return this.#id;
  }

  /** Set once another writer has taken the lease: writes must stop. */
  get lost(): TidemarkError | null {
    return this.#lost;
  }

  #record(now = Date.now()): LeaseRecord {
    return { id: this.#id, pid: process.pid, host: os.hostname(), expiresAt: now + this.#ttl, ...(this.#fencing && { fencing: this.#fencing }) };
  }

  /** Writes `record` with `put`, and on success starts the validity window from before the request. */
  async #write(put: (record: LeaseRecord) => Promise<string | null>): Promise<string | null> {
    const sentAt = performance.now();
    const etag = await put(this.#record());
    if (etag !== null) {
      this.#etag = etag;
      this.#validUntil = sentAt + this.#ttl - this.#margin;
    }
    return etag;
  }

  /** Takes the lease or throws E_LOCKED naming the holder; then keeps it renewed. */
  async acquire(): Promise<void> {
    let etag = await this.#write((r) => this.#store.putIfAbsent(r));
    if (etag === null) {
      const current = await this.#store.get();
      if (current?.record?.id === this.#id) {
        // Our own PUT landed on an attempt whose answer was lost; the retry was refused.
        etag = await this.#write((r) => this.#store.putIfMatch(r, current.etag));
      } else {
        if (current?.record && !takeable(current.record)) throw this.#locked(current.record);
        etag = await this.#write((r) => (current ? this.#store.putIfMatch(r, current.etag) : this.#store.putIfAbsent(r)));
        if (etag !== null && current) this.#log.warn({ holder: current.record }, "took over a writer lease that had expired or whose process is gone");
      }
      if (etag === null) {
        const winner = await this.#store.get();
        throw this.#locked(winner?.record ?? null);
      }
    }
    this.#timer = setInterval(() => void this.renew().catch(() => {}), Math.max(200, Math.floor(this.#ttl / 3)));
    this.#timer.unref();
  }

  /** Extends the lease; marks it lost when another writer holds it. Failures in transit are logged. */
  renew(): Promise<void> {
    this.#renewing ??= this.#renew().finally(() => (this.#renewing = null));
    return this.#renewing;
  }

  async #renew(): Promise<void> {
    if (this.#etag === null || this.#lost) return;
    try {
      if ((await this.#write((r) => this.#store.putIfMatch(r, this.#etag!))) !== null) return;
      const current = await this.#store.get();
      // Still our record: a retried renewal whose first attempt landed. Adopt its ETag.
      if (current?.record?.id === this.#id && (await this.#write((r) => this.#store.putIfMatch(r, current.etag))) !== null) return;
      const holder = current?.record ?? null;
      this.#lost = new TidemarkError("E_LOCKED", `lost the writer lease on ${this.#where}: ${holder ? `${describe(holder)} holds it now` : "it was taken over and released"}`, {
        hint: "another writer took over while this one was paused or cut off from the store; stop this one (nothing it did not acknowledge is kept)",
      });
      this.#log.error({ holder }, "writer lease lost; refusing further writes");
      this.#stop();
    } catch (err) {
      // A renewal that fails in transit is retried at the next tick; the lease lasts 3 ticks.
      this.#log.warn({ err }, "could not renew the writer lease; will retry");
    }
  }

  /**
   * Resolves when the lease is certainly still this writer's; renews first when its validity
   * has run out or is about to. Throws E_LOCKED when it was lost or cannot be renewed.
   */
  async ensureValid(): Promise<void> {
    if (this.#lost) throw this.#lost;
    if (this.#etag === null) throw new TidemarkError("E_LOCKED", `${this.#where}: the writer lease was released`);
    if (performance.now() < this.#validUntil - this.#margin) return;
    await this.renew();
    if (this.#lost) throw this.#lost;
    const late = performance.now() - this.#validUntil;
    if (late >= 0) {
      throw new TidemarkError("E_LOCKED", `${this.#where}: the writer lease could not be renewed and ran out ${Math.round(late)} ms ago; refusing to write`, {
        hint: "the store is unreachable or slow (another writer may take over); this change was not acknowledged: retry once the store answers",
      });
    }
  }

  /** Marks the lease lost because another writer's object was found where this one writes. */
  fenced(key: string): TidemarkError {
    this.#lost ??= new TidemarkError("E_LOCKED", `${this.#where}: another writer wrote ${key}: this writer lost the backup`, {
      hint: "another writer took over while this one was paused or cut off from the store; this change was not acknowledged: stop this writer",
    });
    this.#stop();
    return this.#lost;
  }

  /** Stops this writer for good: a write whose ack the lease could not cover leaves it unsure. */
  abandon(err: TidemarkError): void {
    this.#lost ??= err;
    this.#stop();
  }

  /** Stops renewing and deletes the lease if it is still ours. */
  async release(): Promise<void> {
    this.#stop();
    if (this.#etag === null || this.#lost) return;
    this.#etag = null;
    const current = await this.#store.get();
    if (current?.record?.id === this.#id) await this.#store.delete();
  }

  #stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  #locked(record: LeaseRecord | null): TidemarkError {
    return new TidemarkError("E_LOCKED", `${this.#where} is locked by another writer: ${record ? describe(record) : "an unknown writer"}`, { hint: lockedHint(record) });
  }
}

/** A lease may be taken over once it expired, or when its holder on this host is gone. */
function takeable(record: LeaseRecord): boolean {
  if (record.expiresAt < Date.now()) return true;
  return record.host === os.hostname() && !isProcessAlive(record.pid);
}

/** What to do about a lease held by someone else, with times that are true now. */
function lockedHint(record: LeaseRecord | null): string {
  if (!record) return "another writer is taking the lease at this moment; try again";
  const left = record.expiresAt - Date.now();
  const when = new Date(record.expiresAt).toISOString();
  if (left < 0) return `its lease expired at ${when} and another writer took it over just now; try again`;
  const self = record.host === os.hostname() ? `PID ${record.pid} runs on this host: stop it` : "stop that writer";
  return `${self}; if it is gone, its lease expires at ${when} (in ${Math.ceil(left / 1000)} s) and is then taken over`;
}

/** A lease object's record, or null when it is not one (a lease that cannot be read is takeable). */
export function parseLeaseRecord(bytes: Buffer): LeaseRecord | null {
  try {
    const parsed = JSON.parse(bytes.toString("utf8")) as LeaseRecord;
    return typeof parsed?.id === "string" && Number.isFinite(parsed.expiresAt) && Number.isInteger(parsed.pid) ? parsed : null;
  } catch {
    return null;
  }
}

/** "PID n on host h", for messages. */
export function describe(record: LeaseRecord): string {
  return `PID ${record.pid} on host ${record.host}`;
}
