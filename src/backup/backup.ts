/**
 * The backup as the rest of tidemark sees it (DESIGN.md, "Backend contract").
 *
 * It is implemented once, by the core (`stored-backup.ts`), over a backend that only stores
 * bytes (`storage.ts`). The version rules (`model/version-rules.ts`) decide whether a change is
 * acceptable before it gets here; records and blobs are sealed by the core with
 * `format/record-codec.ts` and `format/snapshot-codec.ts`, so no backend sees a plain byte of
 * an encrypted backup.
 */
import type { CapturedPages, SnapshotSource, Statement, StoredChange } from "../model/change.js";
import type { CompressionName } from "../format/sealing.js";
import type { Keyring } from "../format/keyring.js";
import type { DecodedRecord } from "../format/record-codec.js";
import type { Logger } from "../util/logger.js";
import type { RetentionPolicy } from "../model/retention.js";
import type { BackupSettings } from "./settings.js";
import type { WriterInfo } from "./storage.js";

export type { BackendHead } from "../model/version-rules.js";
import type { BackendHead } from "../model/version-rules.js";

/** What `status` reports about a backup. */
export interface BackendStatus extends BackendHead {
  /** Version of the newest base snapshot; 0 when the live log starts from an empty database. */
  readonly baseVersion: number;
  /** The oldest version a restore can target, in any generation held; 0 when the backup is empty. */
  readonly firstVersion: number;
  /** Change records in the live log, base snapshot included, rewound changes excluded. */
  readonly records: number;
  /** Bytes the backup occupies in storage: logs and snapshot blobs. */
  readonly bytes: number;
  /** Of those, the bytes of live snapshot blobs. */
  readonly snapshotBytes: number;
  /** When the head change was made (ms since the epoch); absent when the backup is empty. */
  readonly headTimestamp?: number;
  /**
   * The generations held, oldest first, the live one last: each is a base and the changes
   * after it. Older ones are kept by the retention policy, for restores of older versions.
   */
  readonly generations: readonly GenerationStatus[];
  /** Set when the log ends in a torn record (an append cut short by a crash) that is being ignored. */
  readonly tornTail?: { readonly location: string; readonly offset: number; readonly bytes: number };
  /**
   * Set when a backup opened read-only is damaged where its head needs it: a damaged record in
   * the live log (what precedes it can be read and restored, and the head is the last change
   * before it), or a damaged live base snapshot. A writer refuses to open such a backup.
   */
  readonly damage?: Damage;
  /** The backup's own settings (compression, encryption, retention), from its identity. */
  readonly settings?: Omit<BackupSettings, "keys">;
  /** Who holds the writer lock and how writers are fenced, where the storage says (S3). */
  readonly writer?: WriterInfo;
}

/** Where a backup is damaged. */
export interface Damage {
  /** The file or object key, and the byte offset of the damaged record. */
  readonly location: string;
  readonly offset?: number;
  /** What is wrong, as the error that found it says. */
  readonly message: string;
  /** The last version before the damage: the newest that can still be restored. */
  readonly intactVersion: number;
  /** Set when what is damaged is the live base snapshot, rather than a record of the log. */
  readonly snapshot?: true;
}

/** One generation of a backup, as status reports it. */
export interface GenerationStatus {
  /** The base's version (0: the generation starts from an empty database). */
  readonly baseVersion: number;
  /** The oldest and newest versions it can restore. */
  readonly firstVersion: number;
  readonly lastVersion: number;
  /** When its first change was made, when known (it may be sealed without the key). */
  readonly firstTimestamp?: number;
  /** Set for an older generation that is damaged (read-only opens): it is read up to the damage. */
  readonly damage?: Damage;
}

/** A change ready to store: validated by the version rules, timestamp filled in. */
export interface ChangeToStore {
  readonly version: number;
  readonly timestamp: number;
  readonly snapshot?: SnapshotSource;
  readonly transaction?: readonly Statement[];
  /** Set for a continuation of the head version (see `ChangeInput.continuation`). */
  readonly continuation?: true;
  /**
   * A redo: the change replaces the last change, which must be rewindable and of the same
   * version, in one durable record (a rewind and the change, applied together or not at all).
   */
  readonly replacesLast?: true;
  /** Pages captured from a WAL (a captured backup's changes; never with a transaction). */
  readonly captured?: CapturedPages;
}

/** The new base that compaction installs. */
export interface CompactionBase {
  /** The version the snapshot is as of. Must be a version the backup holds and that can no longer be rewound. */
  readonly version: number;
  /** The timestamp of change `version`, kept so that point-in-time restores stay right. */
  readonly timestamp: number;
  /** Opens the SQLite file as of `version`; called only once the backup takes it. */
  readonly snapshot: () => SnapshotSource;
}

/** Which changes `streamChanges` yields. */
export interface ChangeRange {
  /** The oldest version the caller needs to rebuild; defaults to `to`. */
  readonly from?: number;
  /** The last version to yield; defaults to the head. */
  readonly to?: number;
}

/**
 * A backup.
 *
 * Callers must not overlap `addChange` and `rewind` calls (the ingest layer queues them);
 * `compact` may run while they continue, and readers may stream at any time.
 */
export interface Backend {
  /** Short name used in messages, such as "file". */
  readonly kind: string;
  /** Where the backup is, safe to print: never contains credentials. */
  readonly location: string;

  /** The head as the version rules need it. Answers from memory; never does I/O. */
  head(): BackendHead;

  /**
   * Counts and sizes for `tidemark status`. With `checkBase`, a backup opened read-only also
   * reads the live base snapshot's frames through, so that `damage` reports a damaged base (a
   * writer checks them at open; a restore finds the damage as it reads them anyway).
   */
  status(options?: { readonly checkBase?: boolean }): Promise<BackendStatus>;

  /**
   * Stores a change after the head. Resolves only once the change is durable (fsync, or a
   * successful PUT). On failure nothing durable has changed, and the head is as before.
   * Throws E_CLOSED when the backend was opened read-only.
   */
  addChange(change: ChangeToStore): Promise<void>;

  /**
   * Stores several changes after the head in one write (one object on S3): each without a
   * snapshot and one version after the one before, the first after the head. All are durable
   * when it resolves; on failure none is. How a replica catches up in few requests.
   */
  addChanges(changes: readonly ChangeToStore[]): Promise<void>;

  /**
   * The last change while it can be rewound (what a redo replaces), read back and decoded;
   * null when there is none. A redo compares it with the incoming change.
   */
  lastChange(): Promise<DecodedRecord | null>;

  /** The timestamps of the head change and of the change before it, where known (from memory). */
  lastTimestamps(): { readonly head?: number; readonly prev?: number };

  /**
   * Drops the last change, durably, so that it never reappears in a restore. Throws
   * E_REWIND when `head().prevVersion` is null.
   */
  rewind(): Promise<void>;

  /**
   * Yields the changes needed to rebuild any version from `range.from` to `range.to`: first
   * the newest change carrying a snapshot at or before `from` (if any), then every later live
   * change in version order up to `to`. Rewound changes never appear. Records are verified on
   * the way; damage raises E_CORRUPT naming the version and the file offset or object key.
   * Throws E_RANGE for a version not held.
   */
  streamChanges(range?: ChangeRange): AsyncIterable<StoredChange>;

  /**
   * Installs `base` as the new start of the log, atomically: a crash at any point leaves a
   * backup that restores to the same head. Changes after `base.version` are kept, so the
   * last change stays rewindable. Storage no longer needed is reclaimed.
   */
  compact(base: CompactionBase): Promise<void>;

  /**
   * Deletes every change and snapshot, leaving an empty backup (its identity and lock stay).
   * Only `tidemark copy --force` uses it, on a destination it is about to overwrite.
   */
  reset(): Promise<void>;

  /**
   * Marks the backup as being filled by `tidemark copy` (`what` says from where), or, with
   * undefined, as whole again. While marked, every open refuses it but one that allows it.
   */
  markIncomplete(what: string | undefined): Promise<void>;

  /** Releases the writer lock and any handles. Safe to call twice. */
  close(): Promise<void>;
}

/** How a backend is opened. */
export type OpenMode =
  /** Read only; takes no lock and never writes, even to drop a torn tail. */
  | "read"
  /** The single writer: takes the lock, repairs a torn tail, cleans up after crashes. */
  | "write"
  /** Creates a new, empty backup and opens it for writing; refuses an existing one. */
  | "create";

/** How a backup is opened. */
export interface BackendOptions {
  readonly mode: OpenMode;
  /** Where warnings (a dropped torn tail, a cleaned-up temp file) go. */
  readonly log?: Logger;
  /**
   * Several backups in this process write at once (the daemon): overlap their flushes so that
   * the storage can commit them together, at some cost to a lone writer's latency. Backends
   * for which this means nothing ignore it.
   */
  readonly groupCommit?: boolean;
  /** Called before a request that failed transiently is retried (for metrics). */
  readonly onRetry?: (op: string, attempt: number, err: Error) => void;
  /** How new records and snapshots are compressed; the backup's own setting by default. */
  readonly compression?: CompressionName;
  /** Brotli's quality, when compressing with brotli (1 by default). */
  readonly brotliQuality?: number;
  /** Encryption keys: the active one seals what is written; any may open what is read. */
  readonly keyring?: Keyring;
  /** How much history compaction keeps; recorded as the backup's own setting when given. */
  readonly retention?: RetentionPolicy;
  /**
   * Create mode: the backup is a captured one (`tidemark watch`), holding pages a database
   * committed rather than SQL a host reported. Fixed at creation; the two never mix.
   */
  readonly capture?: boolean;
  /** Open a backup that an interrupted copy left (only `tidemark copy --force` does). */
  readonly allowIncomplete?: boolean;
}

/** A backend that can also store transactions synchronously, for hosts that cannot await. */
export interface SyncBackend extends Backend {
  /** addChange for a change without a snapshot, durable when it returns. */
  addChangeSync(change: ChangeToStore): void;
  /** rewind, done when it returns. */
  rewindSync(): void;
}

/** Whether `backend` offers the synchronous calls. */
export function isSyncBackend(backend: Backend): backend is SyncBackend {
  const b = backend as Partial<SyncBackend>;
  return typeof b.addChangeSync === "function" && typeof b.rewindSync === "function";
}
