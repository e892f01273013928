/**
 * The snapshot blobs of a backup, as the core keeps track of them: their sizes, the ones being
 * written, and their removal once no record points to them.
 */
import { randomBytes } from "node:crypto";
import type { SnapshotRef } from "../format/record-codec.js";
import type { Codec } from "../format/sealing.js";
import { SnapshotEncoder } from "../format/snapshot-codec.js";
import type { Logger } from "../util/logger.js";
import type { Storage } from "./storage.js";

/** The blobs of one backup; see the module comment. */
export class SnapshotBlobs {
  readonly #storage: Storage;
  readonly #log: Logger;
  /** Sizes of the blobs stored, by name. */
  readonly #sizes = new Map<string, number>();
  /** Blobs being written, which no record points to yet: collection leaves them. */
  readonly #pending = new Set<string>();

  constructor(storage: Storage, log: Logger) {
    this.#storage = storage;
    this.#log = log;
  }

  /** Learns what the storage holds (at open). */
  async load(): Promise<void> {
    for (const blob of await this.#storage.listBlobs()) this.#sizes.set(blob.name, blob.size);
  }

  /** Bytes of the blobs named. */
  bytes(names: Iterable<string>): number {
    let n = 0;
    for (const name of names) n += this.#sizes.get(name) ?? 0;
    return n;
  }

  /**
   * Streams a snapshot into a new blob, sealed with `codec`, durably. Returns its reference; the
   * blob stays out of collection until `settled` is called for it (in this process: the next
   * writer's open collects it if no record points to it).
   */
  async put(version: number, source: AsyncIterable<Uint8Array>, codec: Codec): Promise<SnapshotRef> {
    const name = `snap-${String(version).padStart(20, "0")}-${randomBytes(4).toString("hex")}.tms`;
    const encoder = new SnapshotEncoder(codec);
    this.#pending.add(name);
    try {
      this.#sizes.set(name, await this.#storage.putBlob(name, encoder.frames(source)));
    } catch (err) {
      this.#pending.delete(name);
      throw err;
    }
    return { ...encoder.digest, ref: name };
  }

  /** The blob `put` wrote is pointed to now, or is known to be unused: collection may consider it. */
  settled(name: string): void {
    this.#pending.delete(name);
  }

  /** Deletes a blob; a failure is logged, and the next writer's collection retries it. */
  async delete(name: string): Promise<void> {
    try {
      await this.#storage.deleteBlob(name);
      this.#sizes.delete(name);
    } catch (err) {
      this.#log.warn({ err, blob: name }, "could not delete a snapshot no record needs; the next writer removes it");
    }
  }

  /** Removes the blobs not in `referenced`, but those still being written. */
  async collect(referenced: ReadonlySet<string>): Promise<void> {
    for (const name of [...this.#sizes.keys()]) {
      if (!referenced.has(name) && !this.#pending.has(name)) await this.delete(name);
    }
  }
}
