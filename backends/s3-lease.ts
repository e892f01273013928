/**
 * The single-writer lease of an S3 backup: one object, written with conditional PUTs.
 *
 * - Acquire: PUT with `If-None-Match: *`, which succeeds only if there is no lease.
 * - A lease that has expired, or whose holder is a process on this host that is gone, is
 *   taken over with `If-Match: <its ETag>`, so that two contenders cannot both win.
 * - Renew: PUT with `If-Match: <our ETag>` every third of the lease's life. A failed renewal
 *   means another writer took over: the backend stops writing.
 *
 * Some S3-compatible servers (s3rver among them) ignore conditional headers. The backend
 * detects that at open and tells the store so; the lease then still refuses a second writer
 * that starts while the first is alive, but cannot close the race of two that start at once.
 */
import os from "node:os";
import { randomBytes } from "node:crypto";
import { TidemarkError, isProcessAlive, type Logger } from "../src/backend-kit.js";

/** How long a lease lasts without renewal. */
export const LEASE_TTL_MS = 30_000;

/** What a lease object says. */
export interface LeaseRecord {
  readonly id: string;
  readonly pid: number;
  readonly host: string;
  readonly expiresAt: number;
}

/** The conditional operations the lease needs from the store. */
export interface LeaseStore {
  /** The lease and its ETag, or null if there is none. */
  get(): Promise<{ record: LeaseRecord | null; etag: string } | null>;
  /** Writes only if there is no lease; returns the new ETag, or null if one exists (412). */
  putIfAbsent(record: LeaseRecord): Promise<string | null>;
  /** Writes only if the lease still has `etag`; returns the new ETag, or null if it changed (412). */
  putIfMatch(record: LeaseRecord, etag: string): Promise<string | null>;
  /** Deletes the lease. */
  delete(): Promise<void>;
}

/** A writer lease held by this process. */
export class Lease {
  readonly #store: LeaseStore;
  readonly #where: string;
  readonly #log: Logger;
  readonly #ttl: number;
  readonly #id = randomBytes(8).toString("hex");
  #etag: string | null = null;
  #timer: NodeJS.Timeout | null = null;
  #lost: TidemarkError | null = null;

  constructor(store: LeaseStore, where: string, log: Logger, ttlMs = LEASE_TTL_MS) {
    this.#store = store;
    this.#where = where;
    this.#log = log;
    this.#ttl = ttlMs;
  }

  /** Set once another writer has taken the lease: writes must stop. */
  get lost(): TidemarkError | null {
    return this.#lost;
  }

  #record(now = Date.now()): LeaseRecord {
    return { id: this.#id, pid: process.pid, host: os.hostname(), expiresAt: now + this.#ttl };
  }

  /** Takes the lease or throws E_LOCKED naming the holder; then keeps it renewed. */
  async acquire(): Promise<void> {
    this.#etag = await this.#store.putIfAbsent(this.#record());
    if (this.#etag === null) {
      const current = await this.#store.get();
      if (current?.record && !this.#takeable(current.record)) throw this.#locked(current.record);
      this.#etag = current ? await this.#store.putIfMatch(this.#record(), current.etag) : await this.#store.putIfAbsent(this.#record());
      if (this.#etag === null) {
        const winner = await this.#store.get();
        throw this.#locked(winner?.record ?? null);
      }
      if (current?.record) this.#log.warn({ holder: current.record }, "took over a writer lease that had expired or whose process is gone");
    }
    this.#timer = setInterval(() => void this.renew(), Math.max(1000, this.#ttl / 3));
    this.#timer.unref();
  }

  /** Extends the lease; on failure marks it lost. */
  async renew(): Promise<void> {
    if (this.#etag === null || this.#lost) return;
    try {
      const etag = await this.#store.putIfMatch(this.#record(), this.#etag);
      if (etag === null) {
        const holder = (await this.#store.get())?.record ?? null;
        this.#lost = new TidemarkError("E_LOCKED", `lost the writer lease on ${this.#where} to ${describe(holder)}`, {
          hint: "two writers were running; stop one, then restart tidemark",
        });
        this.#log.error({ holder }, "writer lease lost; refusing further writes");
        this.#stop();
        return;
      }
      this.#etag = etag;
    } catch (err) {
      // A renewal that fails in transit is retried at the next tick; the lease lasts 3 ticks.
      this.#log.warn({ err }, "could not renew the writer lease; will retry");
    }
  }

  /** Stops renewing and deletes the lease if it is still ours. */
  async release(): Promise<void> {
    this.#stop();
    if (this.#etag === null || this.#lost) return;
    const current = await this.#store.get();
    if (current?.record?.id === this.#id) await this.#store.delete();
    this.#etag = null;
  }

  #stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** A lease may be taken over once it expired, or when its holder on this host is gone. */
  #takeable(record: LeaseRecord): boolean {
    if (record.expiresAt < Date.now()) return true;
    return record.host === os.hostname() && !isProcessAlive(record.pid);
  }

  #locked(record: LeaseRecord | null): TidemarkError {
    return new TidemarkError("E_LOCKED", `${this.#where} is locked by another writer: ${describe(record)}`, {
      hint: record
        ? `stop that writer; its lease expires at ${new Date(record.expiresAt).toISOString()} if it stopped renewing`
        : "another writer is starting; try again",
    });
  }
}

function describe(record: LeaseRecord | null): string {
  if (!record) return "an unknown writer";
  return `PID ${record.pid} on host ${record.host}`;
}
