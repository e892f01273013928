/**
 * The storage contract a backend implements (DESIGN.md, "Backend contract: the core decides, a
 * backend stores").
 *
 * A backend stores bytes and nothing else: two small documents, the sealed record logs of the
 * backup's generations, snapshot blobs, and a writer lock. Everything those bytes mean (the
 * version rules, settings, the generations manifest, retention, garbage collection, damage,
 * status, sealing) is the core's, in `src/backup/`, written once. The core seals (compresses,
 * encrypts, checksums) every byte before a backend sees it.
 *
 * A generation is one base and the changes after it: an append-only log of records. The
 * newest generation is live; appends go to it. Compaction writes a whole new generation,
 * which becomes the newest in one atomic step. Older generations are kept, read-only, for as
 * long as the manifest names them.
 *
 * Offsets are bytes from the start of a generation's log, on every backend. A backend that
 * stores a log in several pieces (an object per append) keeps each append's bytes together:
 * a record never spans two pieces.
 */
import type { PositionedReader } from "../format/snapshot-codec.js";
import { BackendError, asBackendError, type TidemarkError } from "../util/errors.js";
import type { Logger } from "../util/logger.js";

/** The small documents a backup keeps, by name. */
export type DocumentName = "tidemark.json" | "generations.json";

/** A generation that exists, and the size of its log in bytes. */
export interface GenerationListing {
  readonly id: number;
  readonly size: number;
}

/** A snapshot blob that exists. */
export interface BlobListing {
  readonly name: string;
  readonly size: number;
}

/** Bytes of a generation's log, as `readLog` yields them. */
export interface LogChunk {
  /** The file or object the bytes are in, for messages (never a credential). */
  readonly segment: string;
  /** Offset of `bytes[0]` in the generation's log. */
  readonly offset: number;
  /** Offset in the generation's log where the segment begins (0 for a single-file log). */
  readonly segmentStart: number;
  readonly bytes: Buffer;
  /** True when the segment ends with this chunk: no record continues past it. */
  readonly segmentEnd: boolean;
}

/** The writer lock, once taken. */
export interface WriterLock {
  /** Throws the error that says why, once the lock is lost (a lease taken over). */
  check(): void;
  /** Releases the lock. Safe to call twice. */
  release(): Promise<void>;
}

/** Who holds a backup's writer lock, and how the store keeps a second writer out, for status. */
export interface WriterInfo {
  /** The holder, as "PID n on host h"; absent when no writer holds the backup. */
  readonly holder?: string;
  /** When the holder's lease runs out unless renewed (ms since the epoch), where there is one. */
  readonly expiresAt?: number;
  /** What keeps a second writer out: what the store was found to honour, in a sentence. */
  readonly fencing?: string;
}

/** How a backend is opened. */
export interface StorageOptions {
  /** Whether the core will write: a read-only storage never writes or deletes anything. */
  readonly writable: boolean;
  /** Where warnings go. */
  readonly log: Logger;
  /**
   * Several backups in this process write at once (the daemon): overlap their flushes so that
   * the storage can commit them together. Backends for which this means nothing ignore it.
   */
  readonly groupCommit?: boolean;
  /** Called before a request that failed transiently is retried (for metrics). */
  readonly onRetry?: (op: string, attempt: number, err: Error) => void;
}

/**
 * A backend: the storage of one backup. Methods that fail throw a TidemarkError naming the
 * backend, the operation and the file or key (`BackendError`); "not found" is an answer only
 * where a method says so.
 */
export interface Storage {
  /** Short name used in messages, such as "file". */
  readonly kind: string;
  /** Where the backup is, safe to print: never contains credentials. */
  readonly location: string;
  /**
   * True when an append is all or nothing (an object PUT). A record cut short at the end of a
   * log is then damage; otherwise it is the torn tail of an append that a crash interrupted.
   */
  readonly atomicAppends: boolean;

  /**
   * Prepares the location for a new backup. Throws E_EXISTS when it already holds anything
   * (the core has checked that it holds no backup).
   */
  create(): Promise<void>;

  /** A document's bytes, or undefined when it does not exist. Any other failure throws. */
  readDocument(name: DocumentName): Promise<Buffer | undefined>;

  /** Replaces a document, atomically and durably: a reader sees the old bytes or the new. */
  writeDocument(name: DocumentName, bytes: Buffer): Promise<void>;

  /** Takes the writer lock. Throws E_LOCKED, naming the holder, when another writer has it. */
  lock(): Promise<WriterLock>;

  /** The generations that exist, sorted by id. Lists the store; the core calls it at open. */
  listGenerations(): Promise<GenerationListing[]>;

  /**
   * Yields the bytes of generation `id` from offset `from` up to `to`, in order. `from` is
   * where a record starts. Throws E_BACKEND with a "run it again" hint when the log vanished
   * (a compaction removed it meanwhile).
   */
  readLog(id: number, from: number, to: number): AsyncIterable<LogChunk>;

  /**
   * Appends sealed records to the end of the newest generation's log. Resolves only once they
   * are durable (fdatasync, or a successful PUT). On failure nothing durable has changed.
   */
  append(id: number, bytes: Buffer): Promise<void>;

  /** `append`, done when it returns; offered by backends that can block (the file backend). */
  appendSync?(id: number, bytes: Buffer): void;

  /**
   * Cuts generation `id`'s log back to `size` bytes, durably: drops a torn tail at open. Only
   * called where appends are not atomic.
   */
  truncate(id: number, size: number): Promise<void>;

  /**
   * Writes generation `id` whole, with `bytes` as its log, and makes it the newest: atomically
   * (it exists whole, or not at all) and durably. `id` is higher than every existing one.
   */
  createGeneration(id: number, bytes: Buffer): Promise<void>;

  /**
   * Optional, for a compaction that must not hold up writers: writes generation `id`'s log
   * starting with `bytes`, durably but out of sight (not listed, not the newest, not read),
   * and returns a handle. `commit(more)` appends `more` and makes the generation the newest,
   * with `createGeneration`'s guarantees; it is the only part done while writers wait, so it
   * should cost about one append. `discard()` removes what was staged. A crash before the
   * commit leaves nothing a reader sees (the file backend's temp file goes at the next lock).
   * Without it, the core calls `createGeneration` with the whole log.
   */
  stageGeneration?(id: number, bytes: Buffer): Promise<StagedGeneration>;

  /**
   * Optional: the bytes of generation `id`'s log index (docs/format.md, "Log index"), or
   * undefined when it has none. The core checks them against the log before it uses them.
   */
  readIndex?(id: number): Promise<Buffer | undefined>;

  /**
   * Optional, with `readIndex`: replaces generation `id`'s index. Need not be durable nor
   * atomic (a torn or lost index is ignored), but must never change the log.
   * `deleteGeneration` deletes it too.
   */
  writeIndex?(id: number, bytes: Buffer): Promise<void>;

  /** Deletes an older generation's log (and its index). Deleting one that is gone is not an error. */
  deleteGeneration(id: number): Promise<void>;

  /** Stores a blob from a stream, durably, under a new name. Resolves to its size in bytes. */
  putBlob(name: string, source: AsyncIterable<Uint8Array>): Promise<number>;

  /** Streams a blob. The stream throws E_BACKEND with a "run it again" hint when it vanished. */
  openBlob(name: string): AsyncIterable<Buffer>;

  /**
   * Opens a blob for positioned reads, so that a reader takes each snapshot frame in one read
   * into a buffer it reuses. Optional (the file backend offers it); without it readers stream
   * `openBlob`. Throws as `openBlob` does when the blob vanished.
   */
  readBlob?(name: string): Promise<BlobReader>;

  /** The blobs that exist, sorted by name. */
  listBlobs(): Promise<BlobListing[]>;

  /** Deletes a blob. Deleting one that is gone is not an error. */
  deleteBlob(name: string): Promise<void>;

  /**
   * Who holds the writer lock and how writers are fenced, for `status`. Reads only; optional.
   */
  writer?(): Promise<WriterInfo>;

  /** Releases handles and clients. Safe to call twice. The core releases the lock first. */
  close(): Promise<void>;
}

/** A generation written by {@link Storage.stageGeneration}, not yet the newest. */
export interface StagedGeneration {
  /** Appends `more` (possibly empty) and makes the generation the newest, atomically and durably. */
  commit(more: Buffer): Promise<void>;
  /** Removes the staged generation. Safe after a failed commit, and twice. */
  discard(): Promise<void>;
}

/** A backend module's factory: `export const createStorage: StorageFactory`. */
export type StorageFactory = (url: URL, options: StorageOptions) => Promise<Storage>;

/** A blob open for positioned reads ({@link Storage.readBlob}): `read(into, length, position)`, `close()`. */
export type BlobReader = PositionedReader;

/**
 * The error for a log or blob that is gone while being read (a compaction in another process
 * removed it): E_BACKEND with a "run it again" hint. Other failures are wrapped as they are.
 */
export function vanished(backend: string, op: string, where: string, err: unknown): TidemarkError {
  const e = err as { code?: string; name?: string; $metadata?: { httpStatusCode?: number } };
  if (e?.code === "ENOENT" || e?.name === "NoSuchKey" || e?.$metadata?.httpStatusCode === 404) {
    return new BackendError(backend, op, where, "disappeared while reading (a compaction ran meanwhile)", { cause: err, hint: "run the command again" });
  }
  return asBackendError(backend, op, where, err);
}
