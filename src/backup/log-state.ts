/**
 * What a sequence of stored records means: the head, whether it can be rewound, where the
 * bases are. The core feeds it records in log order as it scans or writes, so the meaning of a
 * log is defined once, and a log that breaks the rules is reported as corrupt.
 */
import { RecordType } from "../format/record-codec.js";
import { canFollow } from "../model/version-rules.js";
import { CorruptError, TidemarkError } from "../util/errors.js";

/** One record as the state machine needs it. */
export interface LogEntry {
  readonly type: RecordType;
  readonly version: number;
  /** Set for change records that carry a snapshot: the name of its blob. */
  readonly snapshot?: string;
  /** Where the record starts: a byte offset in its generation's log. */
  readonly position: number;
  /** Stored size of the record in bytes. */
  readonly length: number;
  /** The change's timestamp, when the backend knows it without a read. */
  readonly timestamp?: number;
  /** Set for a change record that continues the head version (it keeps the head where it is). */
  readonly continuation?: true;
  /** Set for a redo: the change record first rewinds the live change of its version, then takes its place. */
  readonly replacesLast?: true;
}

/** A live change that carries a snapshot. */
export interface LiveSnapshot {
  readonly version: number;
  readonly position: number;
  /** The backend's name for the blob. */
  readonly ref: string;
}

/** The state of a log after some records. */
export class LogState {
  /** Version of the newest live change; 0 when none. */
  head = 0;
  /** Version rewind() returns to; null when rewind is not allowed. */
  prevVersion: number | null = null;
  /** Version of the oldest live change; 0 when none. */
  firstVersion = 0;
  /** Live change records. */
  records = 0;
  /** Live changes carrying snapshots, oldest first. */
  readonly snapshots: LiveSnapshot[] = [];
  /** The newest live change, while it can still be rewound. */
  last: LogEntry | null = null;
  /** The oldest live change (null when empty). */
  firstEntry: LogEntry | null = null;
  /** The live head change (null when empty), whether or not it can be rewound. */
  headEntry: LogEntry | null = null;
  /** The live change before the head (null when none is known). */
  prevEntry: LogEntry | null = null;
  /** Timestamp of the head change, when known. */
  headTimestamp: number | undefined;
  #prevTimestamp: number | undefined;

  readonly #location: string;

  /** @param location names the log in errors (a file path or a key prefix). */
  constructor(location: string) {
    this.#location = location;
  }

  /** Timestamp of the change before the head, when known (what a redo of the head follows). */
  get prevTimestamp(): number | undefined {
    return this.#prevTimestamp;
  }

  /** Sets the change-before-the-head's timestamp once read from its record (at open). */
  set prevTimestamp(timestamp: number | undefined) {
    this.#prevTimestamp = timestamp;
  }

  /** Version of the newest live base snapshot; 0 when the log starts from an empty database. */
  get baseVersion(): number {
    return this.snapshots.at(-1)?.version ?? 0;
  }

  /** Applies the next record. Throws CorruptError if it cannot follow the ones before it. */
  apply(entry: LogEntry): void {
    if (entry.type === RecordType.Rewind) {
      this.#rewind(entry);
      return;
    }
    // A redo is a rewind and a change in one record: both apply, or (cut short) neither.
    if (entry.replacesLast) {
      if (entry.continuation) this.#fail(entry, `continuation of version ${entry.version} is marked as replacing a change`);
      this.#rewind(entry);
    }
    const { version } = entry;
    const ok = canFollow(this.head, version, entry.snapshot !== undefined, entry.continuation === true);
    if (!ok) {
      this.#fail(
        entry,
        entry.continuation
          ? `continuation of version ${version} does not continue head ${this.head}`
          : entry.snapshot
            ? `snapshot change ${version} does not come after head ${this.head}`
            : `change ${version} does not follow head ${this.head}`,
      );
    }
    // After a continuation this is the head itself: a rewind removes that record only.
    this.prevVersion = this.head;
    this.head = version;
    this.#prevTimestamp = this.headTimestamp;
    this.headTimestamp = entry.timestamp;
    this.prevEntry = this.headEntry;
    this.headEntry = entry;
    if (this.records === 0) {
      this.firstVersion = version;
      this.firstEntry = entry;
    }
    this.records++;
    if (entry.snapshot) this.snapshots.push({ version, position: entry.position, ref: entry.snapshot });
    this.last = entry;
  }

  #rewind(entry: LogEntry): void {
    const last = this.last;
    if (!last || last.version !== entry.version || this.prevVersion === null) {
      this.#fail(
        entry,
        entry.type === RecordType.Rewind
          ? `rewind of version ${entry.version} does not directly follow change ${entry.version}`
          : `redo of version ${entry.version} does not directly follow a rewindable change ${entry.version}`,
      );
    }
    this.head = this.prevVersion;
    this.prevVersion = null;
    this.headTimestamp = this.#prevTimestamp;
    this.#prevTimestamp = undefined;
    this.headEntry = this.prevEntry;
    this.prevEntry = null;
    this.records--;
    if (this.records === 0) {
      this.firstVersion = 0;
      this.firstEntry = null;
    }
    if (last.snapshot) this.snapshots.pop();
    this.last = null;
  }

  /**
   * Checks a range against the versions held and says where streaming starts: at the newest
   * live snapshot at or before `from`, or at the start of the log. Throws E_RANGE.
   */
  plan(range: { readonly from?: number; readonly to?: number }): { to: number; start: number } {
    const to = range.to ?? this.head;
    const from = range.from ?? to;
    for (const v of [from, to]) {
      if (!Number.isSafeInteger(v) || v < this.firstVersion || v > this.head) {
        throw new TidemarkError(
          "E_RANGE",
          this.head === 0
            ? `version ${v} is not held by ${this.#location}: the backup is empty`
            : `version ${v} is not held by ${this.#location}: it holds ${this.firstVersion}..${this.head}`,
          { hint: this.head === 0 ? "ingest changes first" : `pick a version from ${this.firstVersion} to ${this.head}` },
        );
      }
    }
    let start = 0;
    for (let i = this.snapshots.length - 1; i >= 0; i--) {
      const s = this.snapshots[i]!;
      if (s.version <= Math.min(from, to)) {
        start = s.position;
        break;
      }
    }
    return { to, start };
  }

  #fail(entry: LogEntry, what: string): never {
    throw new CorruptError(this.#location, what, { offset: entry.position, version: entry.version });
  }
}
