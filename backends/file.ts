/**
 * The file backend: one directory per backup, an append-only log and snapshot blob files.
 *
 * Layout (docs/format.md has the bytes):
 *   tidemark.json           identity, written once by `init`
 *   LOCK                    the writer's PID; a second writer is refused
 *   log-NNNNNNNNNN.tml      the log; the highest number is live, compaction starts the next
 *   snap-<version>-<id>.tms snapshot blobs that log records point to
 *   *.tmp                   files being written; a writer removes leftovers at open
 *
 * Every change is one append plus one fdatasync. A rewind appends a rewind record, so a
 * rewound change is never replayed and the rewind survives a crash. Compaction writes the new
 * base blob and a new log beside the old ones and switches by rename.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import type {
  Backend,
  BackendFactory,
  BackendHead,
  BackendOptions,
  BackendStatus,
  ChangeRange,
  ChangeToStore,
  CompactionBase,
  Damage,
} from "../src/backup/backup.js";
import type { StoredChange } from "../src/model/change.js";
import {
  RECORD_HEADER_SIZE,
  RECORD_MAGIC,
  RECORD_OVERHEAD,
  RecordType,
  decodeRecord,
  encodeChangeRecord,
  encodeRewindRecord,
  probeRecord,
  recordSnapshotRef,
  type DecodedRecord,
  type RecordHeader,
  type RecordProbe,
  type SnapshotRef,
} from "../src/format/record-codec.js";
import { SnapshotEncoder, decodeSnapshot } from "../src/format/snapshot-codec.js";
import { LogState, type LogEntry } from "../src/backup/log-state.js";
import { codecFor, initialSettings, retentionFor, shownSettings, updatedSettings, type BackupSettings } from "../src/backup/settings.js";
import { retainedGenerations, type RetentionPolicy } from "../src/model/retention.js";
import { PLAIN, type Codec } from "../src/format/sealing.js";
import type { Keyring } from "../src/format/keyring.js";
import { Mutex } from "../src/util/mutex.js";
import { ReaderCount } from "../src/backup/reader-count.js";
import { silentLogger, type Logger } from "../src/util/logger.js";
import { BackendError, CorruptError, TidemarkError, asBackendError } from "../src/util/errors.js";
import { isProcessAlive } from "../src/util/pid.js";
import { TMP_SUFFIX, fsyncDir, readAll, writeAll, writeFileDurably } from "../src/util/durable-fs.js";

const DRIVER_NAME = "file";
const IDENTITY_FILE = "tidemark.json";
const LOCK_FILE = "LOCK";
const IDENTITY_FORMAT = "tidemark-file";
const IDENTITY_VERSION = 1;
const LOG_RE = /^log-(\d{10})\.tml$/;
const SNAP_RE = /^snap-\d{20}-[0-9a-f]{8}\.tms$/;
const READ_CHUNK = 4 << 20;
/** Lists the older logs that the retention policy keeps. */
const MANIFEST_FILE = "generations.json";

/** A log and its state: the live one, or an older one kept for retention (read-only). */
interface RetainedLog {
  readonly seq: number;
  readonly path: string;
  readonly state: LogState;
  /** End of its last intact record. */
  readonly end: number;
  /** When its first change was made, once read. */
  firstTimestamp?: number;
  /** Read-only opens: damage in this log, which it is read up to. */
  readonly damage?: Damage;
}


/** Opens a file backend at a `file:` URL. */
export const createBackend: BackendFactory = async (url, options) => {
  if (url.protocol !== "file:") {
    throw new BackendError(DRIVER_NAME, "open", url.href, `expected a file: URL, got ${url.protocol}`);
  }
  const dir = fileURLToPath(url);
  const backend = new FileBackend(dir, options);
  await backend.open();
  return backend;
};

function logName(seq: number): string {
  return `log-${String(seq).padStart(10, "0")}.tml`;
}

/** The file backend; see the module comment. */
export class FileBackend implements Backend {
  readonly kind = DRIVER_NAME;
  readonly location: string;
  readonly #dir: string;
  readonly #mode: BackendOptions["mode"];
  readonly #log: Logger;
  readonly #mutex = new Mutex();
  readonly #groupCommit: boolean;

  #seq = 0;
  #logPath = "";
  #fd: number | null = null;
  /** End of the last intact record; appends go here. */
  #end = 0;
  #state!: LogState;
  #torn: BackendStatus["tornTail"];
  /** Read-only opens: damage in the live log, which the backup is read up to. */
  #damage: Damage | undefined;
  #lock: FileLock | null = null;
  #closed = false;
  /** Set after a write fails in a way that leaves the file's state unknown. */
  #broken: Error | null = null;
  #compacting = false;
  readonly #options: BackendOptions;
  /** How records and blobs are sealed; set from the identity and the options at open. */
  #codec: Codec = PLAIN;
  #retention: RetentionPolicy = {};
  /** Older logs that the retention policy keeps, oldest first; read-only. */
  #retained: RetainedLog[] = [];
  #settings: BackendStatus["settings"];
  /** addChange calls waiting on a snapshot upload; synchronous writes must not overlap them. */
  #asyncWrites = 0;
  /** Readers in this process that may still open snapshot blobs. */
  readonly #readers = new ReaderCount();

  constructor(dir: string, options: BackendOptions) {
    this.#dir = dir;
    this.location = dir;
    this.#options = options;
    this.#mode = options.mode;
    this.#groupCommit = options.groupCommit ?? false;
    this.#log = (options.log ?? silentLogger).child({ backend: DRIVER_NAME, dir });
  }

  // ------------------------------------------------------------ open

  /** Opens (or, in create mode, creates) the backup. Called by the factory. */
  async open(): Promise<void> {
    try {
      if (this.#mode === "create") await this.#create();
      await this.#checkIdentity();
      if (this.#mode !== "read") {
        this.#lock = FileLock.acquire(path.join(this.#dir, LOCK_FILE), this.#log);
      }
      await this.#openLog();
    } catch (err) {
      this.#lock?.release();
      if (this.#fd !== null) fs.closeSync(this.#fd);
      throw asBackendError(DRIVER_NAME, "open", this.#dir, err);
    }
  }

  async #create(): Promise<void> {
    fs.mkdirSync(this.#dir, { recursive: true });
    const entries = fs.readdirSync(this.#dir);
    if (entries.includes(IDENTITY_FILE)) {
      throw new TidemarkError("E_EXISTS", `a backup already exists at ${this.#dir}`, {
        hint: `inspect it with: tidemark status ${this.#dir}`,
      });
    }
    if (entries.length > 0) {
      throw new TidemarkError("E_EXISTS", `${this.#dir} is not empty (${entries.length} entries) and holds no backup`, {
        hint: "give init a new or empty directory",
      });
    }
    writeFileDurably(path.join(this.#dir, logName(1)), Buffer.alloc(0));
    this.#writeIdentity({ format: IDENTITY_FORMAT, formatVersion: IDENTITY_VERSION, created: new Date().toISOString(), ...initialSettings(this.#options) });
    fsyncDir(path.dirname(this.#dir));
  }

  #writeIdentity(identity: object): void {
    writeFileDurably(path.join(this.#dir, IDENTITY_FILE), Buffer.from(`${JSON.stringify(identity, null, 2)}\n`));
  }

  async #checkIdentity(): Promise<void> {
    const file = path.join(this.#dir, IDENTITY_FILE);
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") {
        throw new TidemarkError("E_NO_BACKUP", `no backup at ${this.#dir} (${IDENTITY_FILE} not found)`, {
          hint: `create one with: tidemark init ${this.#dir}`,
        });
      }
      throw err;
    }
    let identity: { format?: unknown; formatVersion?: unknown } & BackupSettings;
    try {
      identity = JSON.parse(text);
    } catch {
      throw new CorruptError(file, "identity file is not valid JSON");
    }
    if (identity.format !== IDENTITY_FORMAT) throw new CorruptError(file, `not a tidemark file backup (format ${JSON.stringify(identity.format)})`);
    if (identity.formatVersion !== IDENTITY_VERSION) {
      throw new CorruptError(file, `backup format version ${String(identity.formatVersion)} is not supported`, {}, {
        hint: "upgrade tidemark",
      });
    }
    this.#codec = codecFor(identity, this.#options, this.#dir);
    this.#retention = retentionFor(identity, this.#options);
    const updated = updatedSettings(identity, this.#codec, this.#options);
    if (updated) this.#writeIdentity(updated);
    this.#settings = shownSettings(updated ?? identity);
  }

  async #openLog(): Promise<void> {
    const names = fs.readdirSync(this.#dir);
    const logs = names
      .map((n) => LOG_RE.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    const seq = logs.at(-1);
    if (seq === undefined) throw new CorruptError(this.#dir, "the backup has no log file (log-*.tml)");
    this.#seq = seq;
    this.#logPath = path.join(this.#dir, logName(seq));
    // Readers read a damaged log up to the damage (see #scanLog); a writer refuses it.
    const salvage = this.#mode === "read";
    const live = await this.#scanLog(this.#logPath, salvage);
    this.#state = live.state;
    this.#end = live.end;
    this.#torn = live.torn;
    this.#damage = live.damage;
    const kept = this.#readManifest();
    this.#retained = [];
    for (const old of logs.slice(0, -1)) {
      if (!kept.has(old)) continue;
      const file = path.join(this.#dir, logName(old));
      const g = await this.#scanLog(file, salvage);
      this.#retained.push({ seq: old, path: file, state: g.state, end: g.end, ...(g.damage && { damage: g.damage }) });
    }
    // Nothing of the live log is readable: the newest older generation stands in for it, so
    // that what it holds can still be restored.
    const newest = this.#retained.at(-1);
    if (this.#damage && this.#state.records === 0 && newest) {
      this.#retained.pop();
      this.#seq = newest.seq;
      this.#logPath = newest.path;
      this.#state = newest.state;
      this.#end = newest.end;
      this.#damage = { ...this.#damage, intactVersion: newest.state.head };
    }

    if (this.#mode === "read") {
      if (this.#damage) {
        this.#log.warn({ ...this.#damage }, "the live log is damaged: reading it up to the damage only");
      }
      for (const g of this.#retained) {
        if (g.damage) this.#log.warn({ ...g.damage }, "an older generation is damaged: reading it up to the damage only");
      }
      if (this.#torn) {
        this.#log.warn(this.#torn, "ignoring a torn record at the end of the log (a write cut short by a crash)");
      }
      return;
    }
    // The single writer tidies up after crashes: temp files, superseded logs, orphan blobs.
    for (const n of names) {
      if (n.endsWith(TMP_SUFFIX)) {
        this.#log.info({ file: n }, "removing a temp file left by an interrupted write");
        fs.rmSync(path.join(this.#dir, n), { force: true });
      }
    }
    for (const old of logs.slice(0, -1)) if (!kept.has(old)) fs.rmSync(path.join(this.#dir, logName(old)), { force: true });
    this.#removeUnreferencedSnapshots();
    this.#fd = fs.openSync(this.#logPath, "r+");
    if (this.#torn) {
      this.#log.warn(this.#torn, "dropping a torn record at the end of the log (a write cut short by a crash)");
      fs.ftruncateSync(this.#fd, this.#end);
      fs.fdatasyncSync(this.#fd);
      this.#torn = undefined;
    }
  }

  /**
   * Reads a log from the start and rebuilds its state. Damage (not a torn tail) throws, unless
   * `salvage`: then the log ends before the damaged record, and `damage` says where it is.
   */
  async #scanLog(file: string, salvage = false): Promise<{ state: LogState; end: number; torn: BackendStatus["tornTail"]; damage?: Damage }> {
    const state = new LogState(file);
    const fh = await fsp.open(file, "r");
    /** Where the record being read starts. */
    let at = 0;
    try {
      const size = (await fh.stat()).size;
      const reader = new RecordReader(fh, 0, size, file);
      for (;;) {
        at = reader.end;
        let step = reader.next();
        if (step instanceof Promise) step = await step;
        if (step === null) return { state, end: reader.end, torn: undefined };
        if (step.kind === "torn") return { state, end: reader.end, torn: { location: file, offset: step.offset, bytes: size - step.offset } };
        state.apply(this.#entry(step.buf, step.at, step.offset, step.header, file));
      }
    } catch (err) {
      if (!(salvage && err instanceof CorruptError)) throw err;
      // The damaged record may have been the rewind of the head (or its redo): unless it is
      // known to be the change after the head, the head is not trusted either.
      if (state.last && err.version !== state.head + 1) {
        state.apply({ type: RecordType.Rewind, version: state.head, position: at, length: 0 });
      }
      return { state, end: at, torn: undefined, damage: { location: file, offset: at, message: err.message, intactVersion: state.head } };
    } finally {
      await fh.close();
    }
  }

  /** The retained older logs named by generations.json (none when it is absent). */
  #readManifest(): Set<number> {
    const file = path.join(this.#dir, MANIFEST_FILE);
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch {
      return new Set();
    }
    try {
      const m = JSON.parse(text) as { retained?: unknown };
      if (Array.isArray(m.retained) && m.retained.every((x) => Number.isSafeInteger(x))) return new Set(m.retained as number[]);
    } catch {
      // reported below
    }
    throw new CorruptError(file, "the list of retained generations does not parse", {}, { hint: "restore it from a copy, or delete it to keep only the live log" });
  }

  #writeManifest(seqs: readonly number[]): void {
    writeFileDurably(path.join(this.#dir, MANIFEST_FILE), Buffer.from(`${JSON.stringify({ retained: seqs })}\n`));
  }

  /** The state machine's view of an intact record; no key is needed for it. */
  #entry(buf: Buffer, at: number, offset: number, header: RecordHeader, file: string): LogEntry {
    const snapshot = recordSnapshotRef(buf, at, header, file);
    return { type: header.type, version: header.version, position: offset, length: header.length, ...(snapshot && { snapshot }) };
  }

  // ------------------------------------------------------------ reads

  head(): BackendHead {
    return { version: this.#state.head, prevVersion: this.#state.prevVersion };
  }

  async status(): Promise<BackendStatus> {
    const s = this.#state;
    const headTimestamp = this.#headTimestamp();
    let snapshotBytes = 0;
    for (const ref of this.#liveSnapshots()) {
      try {
        snapshotBytes += fs.statSync(path.join(this.#dir, ref)).size;
      } catch {
        // A missing blob is reported by verify and restore; status only counts bytes.
      }
    }
    const generations = this.#generations().map((g) => ({
      baseVersion: g.state.firstEntry?.snapshot ? g.state.firstVersion : 0,
      firstVersion: g.state.firstVersion,
      lastVersion: g.state.head,
      ...(this.#firstTimestamp(g) !== undefined && { firstTimestamp: this.#firstTimestamp(g)! }),
      ...(g.damage && { damage: g.damage }),
    }));
    const oldest = this.#generations().find((g) => g.state.records > 0);
    return {
      version: s.head,
      prevVersion: s.prevVersion,
      baseVersion: s.baseVersion,
      firstVersion: oldest?.state.firstVersion ?? 0,
      records: s.records,
      bytes: this.#retained.reduce((n, g) => n + g.end, this.#end) + snapshotBytes,
      snapshotBytes,
      generations,
      ...(headTimestamp !== undefined && { headTimestamp }),
      ...(this.#torn && { tornTail: this.#torn }),
      ...(this.#damage && { damage: this.#damage }),
      ...(this.#settings && { settings: this.#settings }),
    };
  }

  /** Every generation held, oldest first: the retained logs, then the live one. */
  #generations(): RetainedLog[] {
    return [...this.#retained, { seq: this.#seq, path: this.#logPath, state: this.#state, end: this.#end }];
  }

  /** Blob names that a live record of any generation points to. */
  #liveSnapshots(): Set<string> {
    return new Set(this.#generations().flatMap((g) => g.state.snapshots.map((x) => x.ref)));
  }

  /** When a generation's first change was made: read from its record once (the key may be needed). */
  #firstTimestamp(g: RetainedLog): number | undefined {
    if (g.firstTimestamp !== undefined || !g.state.firstEntry) return g.firstTimestamp;
    g.firstTimestamp = this.#timestampAt(g.path, g.state.firstEntry);
    const kept = this.#retained.find((r) => r.seq === g.seq);
    if (kept) kept.firstTimestamp = g.firstTimestamp;
    return g.firstTimestamp;
  }

  /** The head change's timestamp: read from its record once, then remembered. */
  #headTimestamp(): number | undefined {
    const s = this.#state;
    if (s.headTimestamp === undefined && s.headEntry) s.headTimestamp = this.#timestampAt(this.#logPath, s.headEntry);
    return s.headTimestamp;
  }

  /** The timestamp of the record `e` of `file`, or undefined when it is sealed and the key is missing. */
  #timestampAt(file: string, e: LogEntry): number | undefined {
    const buf = Buffer.allocUnsafe(e.length);
    const fd = fs.openSync(file, "r");
    try {
      readAll(fd, buf, e.position);
    } finally {
      fs.closeSync(fd);
    }
    const probe = probeRecord(buf, 0);
    if (probe.kind !== "ok") return undefined;
    try {
      return decodeRecord(buf, 0, probe, file, this.#codec.keyring).timestamp;
    } catch {
      return undefined; // an encrypted record without its key: status shows what it can
    }
  }

  streamChanges(range: ChangeRange = {}): AsyncIterable<StoredChange> {
    this.#checkOpen();
    if (this.#state.head === 0) return { [Symbol.asyncIterator]: () => ({ next: async () => DONE }) };
    const g = this.#generationFor(range);
    const { to, start } = g.state.plan(range);
    const limit = g.end;
    const logPath = g.path;
    return {
      [Symbol.asyncIterator]: () =>
        new LogChangeStream(
          fsp.open(logPath, "r").catch((err: unknown) => {
            throw this.#vanished("open", logPath, err);
          }),
          (fh) => new RecordReader(fh, start, limit, logPath),
          this.#readers.enter(),
          to,
          (rec) => {
            const change: { -readonly [K in keyof StoredChange]: StoredChange[K] } = { version: rec.version, timestamp: rec.timestamp };
            if (rec.snapshot) change.snapshot = this.#storedSnapshot(rec.snapshot, rec.version);
            if (rec.transaction) change.transaction = rec.transaction;
            return change;
          },
          logPath,
          this.#codec.keyring,
        ),
    };
  }

  /**
   * The generation that holds `range`: the newest whose versions cover it. The live one serves
   * anything from its base on; a retained one serves older versions.
   */
  #generationFor(range: ChangeRange): RetainedLog {
    const to = range.to ?? this.#state.head;
    const lo = Math.min(range.from ?? to, to);
    const hi = Math.max(range.from ?? to, to);
    const gens = this.#generations();
    for (let i = gens.length - 1; i >= 0; i--) {
      const g = gens[i]!;
      if (g.state.records > 0 && g.state.firstVersion <= lo && g.state.head >= hi) return g;
    }
    throw rangeError(this.#dir, gens, lo, hi);
  }

  #storedSnapshot(ref: SnapshotRef, version: number) {
    const file = path.join(this.#dir, ref.ref);
    const vanished = (err: unknown) => this.#vanished("read", file, err);
    const reading = () => this.#readers.enter();
    const keyring = this.#codec.keyring;
    return {
      size: ref.size,
      open(): AsyncIterable<Buffer> {
        const raw = fs.createReadStream(file, { highWaterMark: 1 << 20 });
        return decodeSnapshot(guardStream(raw, vanished, reading()), ref, file, version, keyring);
      },
    };
  }

  #vanished(op: string, file: string, err: unknown): TidemarkError {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      return new BackendError(DRIVER_NAME, op, file, "file disappeared while reading (a compaction ran meanwhile)", {
        cause: err,
        hint: "run the command again",
      });
    }
    return asBackendError(DRIVER_NAME, op, file, err);
  }

  // ------------------------------------------------------------ writes

  addChange(change: ChangeToStore): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      this.#checkFollows(change);
      if (!change.snapshot) return this.#write(changeRecord(change, this.#codec));
      this.#asyncWrites++;
      try {
        const ref = await this.#writeSnapshot(change.version, change.snapshot);
        try {
          await this.#write(changeRecord(change, this.#codec, ref));
        } catch (err) {
          fs.rmSync(path.join(this.#dir, ref.ref), { force: true });
          throw err;
        }
      } finally {
        this.#asyncWrites--;
      }
    });
  }

  /**
   * Stores a transaction-only change synchronously: for in-process hosts that cannot await
   * (the Journal's synchronous API). Same contract as addChange.
   */
  addChangeSync(change: ChangeToStore): void {
    this.#checkWritable();
    this.#checkNoAsyncWrite();
    if (change.snapshot) throw new Error("file backend: addChangeSync takes no snapshot; use addChange");
    this.#checkFollows(change);
    const { rec, entry } = changeRecord(change, this.#codec);
    this.#append(rec, entry);
  }

  rewind(): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const last = this.#rewindable();
      await this.#write(rewindRecord(last.version, this.#codec));
      if (last.snapshot) fs.rmSync(path.join(this.#dir, last.snapshot), { force: true });
    });
  }

  /** Drops the last change synchronously; same contract as rewind. */
  rewindSync(): void {
    this.#checkWritable();
    this.#checkNoAsyncWrite();
    const last = this.#rewindable();
    const { rec, entry } = rewindRecord(last.version, this.#codec);
    this.#append(rec, entry);
    if (last.snapshot) fs.rmSync(path.join(this.#dir, last.snapshot), { force: true });
  }

  /** The last change, if it may be rewound; throws E_REWIND otherwise. */
  #rewindable(): LogEntry {
    const s = this.#state;
    if (s.prevVersion === null || !s.last) {
      throw new TidemarkError(
        "E_REWIND",
        s.head === 0 ? `nothing to rewind: ${this.#dir} is empty` : `change ${s.head} cannot be rewound: only the last change can be, and only once`,
        { hint: "tidemark status shows the head; a host that is behind the backup must be restored" },
      );
    }
    return s.last;
  }

  #checkFollows(change: ChangeToStore): void {
    const head = this.#state.head;
    const ok = change.snapshot ? change.version > head : change.version === head + 1;
    if (!ok) throw new Error(`file backend: change ${change.version} cannot follow head ${head}; the version rules should have refused it`);
  }

  #checkNoAsyncWrite(): void {
    if (this.#asyncWrites > 0) throw new Error("file backend: a synchronous write overlaps an asynchronous one; use one API at a time");
  }

  /** Appends a record the way this backend was opened to: blocking, or overlapping with others (group commit). */
  #write({ rec, entry }: PendingRecord): void | Promise<void> {
    return this.#groupCommit ? this.#appendAsync(rec, entry) : this.#append(rec, entry);
  }

  /** Appends one encoded record and makes it durable, then updates the state. */
  #append(rec: Buffer, entry: RecordEntry): void {
    const fd = this.#fd!;
    const at = this.#end;
    try {
      writeAll(fd, rec, at);
      fs.fdatasyncSync(fd);
    } catch (err) {
      this.#undoAppend(fd, at, err);
      throw asBackendError(DRIVER_NAME, "append", this.#logPath, err);
    }
    this.#state.apply({ ...entry, position: at, length: rec.length });
    this.#end = at + rec.length;
  }

  /**
   * #append with the write and the fdatasync on libuv's thread pool, so that several backups'
   * flushes overlap and the file system's journal commits them together.
   */
  async #appendAsync(rec: Buffer, entry: RecordEntry): Promise<void> {
    const fd = this.#fd!;
    const at = this.#end;
    try {
      await writeAllAsync(fd, rec, at);
      await new Promise<void>((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
    } catch (err) {
      this.#undoAppend(fd, at, err);
      throw asBackendError(DRIVER_NAME, "append", this.#logPath, err);
    }
    this.#state.apply({ ...entry, position: at, length: rec.length });
    this.#end = at + rec.length;
  }

  /** After a failed append, cuts the log back to its last intact record so the next append is clean. */
  #undoAppend(fd: number, at: number, cause: unknown): void {
    try {
      fs.ftruncateSync(fd, at);
      fs.fdatasyncSync(fd);
    } catch (err) {
      // The file's tail is unknown now; refuse writes until it is reopened and rescanned.
      this.#broken = new BackendError(DRIVER_NAME, "append", this.#logPath, "log tail could not be repaired after a failed write", {
        cause: err,
        hint: "restart tidemark; the torn tail is dropped at open",
      });
      this.#log.error({ err, cause }, "log tail could not be repaired after a failed write");
    }
  }

  /** Streams a snapshot into a new blob file, durably. Returns its reference. */
  async #writeSnapshot(version: number, source: AsyncIterable<Uint8Array>): Promise<SnapshotRef> {
    const name = `snap-${String(version).padStart(20, "0")}-${randomBytes(4).toString("hex")}.tms`;
    const final = path.join(this.#dir, name);
    const tmp = final + TMP_SUFFIX;
    const encoder = new SnapshotEncoder(this.#codec);
    try {
      const fh = await fsp.open(tmp, "wx");
      try {
        for await (const frame of encoder.frames(source)) await fh.write(frame);
        await fh.sync();
      } finally {
        await fh.close();
      }
      fs.renameSync(tmp, final);
      fsyncDir(this.#dir);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw asBackendError(DRIVER_NAME, "write snapshot", final, err);
    }
    return { ...encoder.digest, ref: name };
  }

  async compact(base: CompactionBase): Promise<void> {
    this.#checkWritable();
    if (this.#compacting) throw new TidemarkError("E_BACKEND", `[file] compact ${this.#dir}: a compaction is already running`);
    this.#compacting = true;
    let ref: SnapshotRef | undefined;
    try {
      const s = this.#state;
      if (base.version > s.head || (base.version === s.head && s.prevVersion !== null) || base.version < s.firstVersion) {
        throw new Error(`file backend: compaction base ${base.version} is not a settled version of ${s.firstVersion}..${s.head}`);
      }
      // Records up to the base cannot change any more, so they are read outside the lock.
      const tailStart = await this.#endOfLiveRecord(base.version);
      ref = await this.#writeSnapshot(base.version, base.snapshot);
      const baseRef = ref;
      await this.#mutex.run(() => this.#install(base, baseRef, tailStart));
    } catch (err) {
      if (ref) fs.rmSync(path.join(this.#dir, ref.ref), { force: true });
      throw asBackendError(DRIVER_NAME, "compact", this.#dir, err);
    } finally {
      this.#compacting = false;
    }
  }

  /**
   * Finds where the live record of `version` ends in the log. Every record up to the end was
   * verified when it was read at open or appended, so this only hops from header to header.
   */
  async #endOfLiveRecord(version: number): Promise<number> {
    const fh = await fsp.open(this.#logPath, "r");
    try {
      const limit = this.#end;
      let found = -1;
      let win = Buffer.alloc(0);
      let winStart = 0;
      for (let offset = 0; offset < limit; ) {
        if (offset + RECORD_HEADER_SIZE > winStart + win.length) {
          win = Buffer.allocUnsafe(Math.min(READ_CHUNK, limit - offset));
          const { bytesRead } = await fh.read(win, 0, win.length, offset);
          win = win.subarray(0, bytesRead);
          winStart = offset;
          if (bytesRead < RECORD_HEADER_SIZE) break;
        }
        const at = offset - winStart;
        if (win.readUInt32LE(at) !== RECORD_MAGIC.readUInt32LE(0)) {
          throw new CorruptError(this.#logPath, "no record magic where a record was verified before", { offset });
        }
        const bodyLength = win.readUInt32LE(at + 20);
        if (win.readUInt32LE(at + 8) === version % 0x1_0000_0000 && win.readUInt32LE(at + 12) === Math.floor(version / 0x1_0000_0000)) {
          // A rewind record of that version cancels the change before it.
          found = win[at + 5] === RecordType.Change ? offset + RECORD_OVERHEAD + bodyLength : -1;
        }
        offset += RECORD_OVERHEAD + bodyLength;
      }
      if (found < 0) throw new Error(`file backend: no live record of version ${version} in ${this.#logPath}`);
      return found;
    } finally {
      await fh.close();
    }
  }

  /**
   * Writes the new log (base record, then every record after the base) and switches to it.
   * Synchronous from start to end, so no append can land in between.
   */
  #install(base: CompactionBase, ref: SnapshotRef, tailStart: number): void {
    this.#checkWritable();
    const oldFd = this.#fd!;
    const tail = Buffer.allocUnsafe(this.#end - tailStart);
    readAll(oldFd, tail, tailStart);
    const content = Buffer.concat([encodeChangeRecord({ version: base.version, timestamp: base.timestamp, snapshot: ref }, this.#codec), tail]);
    const seq = this.#seq + 1;
    const next = path.join(this.#dir, logName(seq));
    const tmp = next + TMP_SUFFIX;
    const state = this.#stateOf(content, next);
    const out = fs.openSync(tmp, "wx");
    try {
      writeAll(out, content, 0);
      fs.fsyncSync(out);
    } finally {
      fs.closeSync(out);
    }
    // The log about to be superseded is listed as retained first, so that a crash right after
    // the switch keeps it; pruning by the retention policy comes after.
    const superseded: RetainedLog = { seq: this.#seq, path: this.#logPath, state: this.#state, end: this.#end };
    this.#writeManifest([...this.#retained.map((g) => g.seq), superseded.seq]);
    fs.renameSync(tmp, next);
    try {
      fsyncDir(this.#dir);
      // The new log is live from here on.
      const fd = fs.openSync(next, "r+");
      fs.closeSync(oldFd);
      this.#fd = fd;
      this.#seq = seq;
      this.#logPath = next;
      this.#state = state;
      this.#end = content.length;
      this.#retained.push(superseded);
      this.#prune();
    } catch (err) {
      this.#broken = new BackendError(DRIVER_NAME, "compact", next, "switching to the new log failed", {
        cause: err,
        hint: "restart tidemark; the backup restores to the same head either way",
      });
      throw this.#broken;
    }
    this.#removeUnreferencedSnapshots();
  }

  /** The state of a log held in memory (one this backend has just written). */
  #stateOf(content: Buffer, location: string): LogState {
    const state = new LogState(location);
    for (let at = 0; at < content.length; ) {
      const probe = probeRecord(content, at);
      if (probe.kind !== "ok") throw new CorruptError(location, `new log does not parse: ${probe.kind}`, { offset: at });
      state.apply(this.#entry(content, at, at, probe, location));
      at += probe.length;
    }
    return state;
  }

  /** Drops the retained logs the retention policy no longer asks for. */
  #prune(): void {
    const gens = this.#generations();
    const keep = retainedGenerations(
      gens.map((g) => ({ id: g.seq, baseTimestamp: this.#firstTimestamp(g) })),
      this.#retention,
      Date.now(),
    );
    const dropped = this.#retained.filter((g) => !keep.has(g.seq));
    if (dropped.length === 0) return;
    this.#retained = this.#retained.filter((g) => keep.has(g.seq));
    this.#writeManifest(this.#retained.map((g) => g.seq));
    for (const g of dropped) fs.rmSync(g.path, { force: true });
  }

  /**
   * Removes blobs no record points to. While a reader in this process is active, compaction
   * leaves superseded blobs in place (a reader that started before the switch may still open
   * them): they go when the last reader finishes, if the backup is still open for writing.
   */
  #removeUnreferencedSnapshots(): void {
    const later = () => {
      if (this.#fd !== null) this.#removeUnreferencedSnapshots();
    };
    if (this.#readers.deferring(later)) return;
    const live = this.#liveSnapshots();
    for (const n of fs.readdirSync(this.#dir)) {
      if (SNAP_RE.test(n) && !live.has(n)) fs.rmSync(path.join(this.#dir, n), { force: true });
    }
  }

  reset(): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      // A new, empty log replaces the old one by rename, as compaction does.
      const seq = this.#seq + 1;
      const next = path.join(this.#dir, logName(seq));
      writeFileDurably(next, Buffer.alloc(0));
      fs.closeSync(this.#fd!);
      const oldPath = this.#logPath;
      this.#fd = fs.openSync(next, "r+");
      this.#seq = seq;
      this.#logPath = next;
      this.#state = new LogState(next);
      this.#end = 0;
      fs.rmSync(oldPath, { force: true });
      for (const g of this.#retained) fs.rmSync(g.path, { force: true });
      this.#retained = [];
      this.#writeManifest([]);
      this.#removeUnreferencedSnapshots();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#mutex.run(() => {
      if (this.#fd !== null) fs.closeSync(this.#fd);
      this.#fd = null;
      this.#lock?.release();
      this.#lock = null;
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new TidemarkError("E_CLOSED", `[file] ${this.#dir}: backend is closed`);
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (this.#broken) throw this.#broken;
    if (this.#fd === null) throw new TidemarkError("E_CLOSED", `[file] ${this.#dir}: opened read-only`);
  }
}

// ------------------------------------------------------------ encoding records

/** What the state machine learns from an appended record. */
type RecordEntry = { type: RecordType; version: number; timestamp?: number; snapshot?: string };
/** An encoded record and its entry. */
type PendingRecord = { rec: Buffer; entry: RecordEntry };

function changeRecord(change: ChangeToStore, codec: Codec, ref?: SnapshotRef): PendingRecord {
  const rec = encodeChangeRecord(
    {
      version: change.version,
      timestamp: change.timestamp,
      ...(ref && { snapshot: ref }),
      ...(change.transaction && { transaction: change.transaction }),
    },
    codec,
  );
  return { rec, entry: { type: RecordType.Change, version: change.version, timestamp: change.timestamp, ...(ref && { snapshot: ref.ref }) } };
}

function rewindRecord(version: number, codec: Codec): PendingRecord {
  return { rec: encodeRewindRecord(version, Date.now(), codec), entry: { type: RecordType.Rewind, version } };
}

function writeAllAsync(fd: number, buf: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number) => {
      if (done === buf.length) return resolve();
      fs.write(fd, buf, done, buf.length - done, position + done, (err, n) => (err ? reject(err) : step(done + n)));
    };
    step(0);
  });
}

// ------------------------------------------------------------ reading records

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });

/**
 * The live changes of a log, in order, up to a version. A change is held back until the next
 * record is read, because a rewind record directly after it cancels it.
 *
 * A hand-written iterator rather than an async generator: it answers from the current read
 * window without a promise hop per record, which is most of the cost of reading a long log.
 */
class LogChangeStream implements AsyncIterator<StoredChange> {
  #reader: RecordReader | null = null;
  #fh: fsp.FileHandle | null = null;
  #held: StoredChange | null = null;
  #finished = false;
  readonly #opening: Promise<fsp.FileHandle>;
  readonly #makeReader: (fh: fsp.FileHandle) => RecordReader;
  readonly #release: () => void;
  readonly #to: number;
  readonly #toChange: (rec: DecodedRecord) => StoredChange;
  readonly #location: string;
  readonly #keyring: Keyring;

  constructor(
    opening: Promise<fsp.FileHandle>,
    makeReader: (fh: fsp.FileHandle) => RecordReader,
    release: () => void,
    to: number,
    toChange: (rec: DecodedRecord) => StoredChange,
    location: string,
    keyring: Keyring,
  ) {
    this.#opening = opening;
    this.#makeReader = makeReader;
    this.#release = release;
    this.#to = to;
    this.#toChange = toChange;
    this.#location = location;
    this.#keyring = keyring;
  }

  next(): Promise<IteratorResult<StoredChange>> {
    if (this.#finished) return this.#end();
    if (!this.#reader) {
      return this.#opening.then((fh) => {
        this.#fh = fh;
        this.#reader = this.#makeReader(fh);
        return this.next();
      }, (err: unknown) => this.#fail(err));
    }
    try {
      for (;;) {
        const step = this.#reader.next();
        if (step instanceof Promise) {
          return step.then((s) => this.#feed(s) ?? this.next(), (err: unknown) => this.#fail(err));
        }
        const out = this.#feed(step);
        if (out) return out;
      }
    } catch (err) {
      return this.#fail(err);
    }
  }

  /** Takes one reader step; returns a result once there is one to give. */
  #feed(step: ReadStep | null): Promise<IteratorResult<StoredChange>> | undefined {
    if (step === null || step.kind === "torn") {
      this.#finished = true;
      const last = this.#held;
      this.#held = null;
      return last ? Promise.resolve({ done: false, value: last }) : this.#end();
    }
    const rec = decodeRecord(step.buf, step.at, step.header, this.#location, this.#keyring);
    if (rec.type === RecordType.Rewind) {
      this.#held = null;
      return undefined;
    }
    const ready = this.#held;
    this.#held = this.#toChange(rec);
    if (!ready) return undefined;
    if (ready.version === this.#to) {
      this.#finished = true;
      this.#held = null;
    }
    return Promise.resolve({ done: false, value: ready });
  }

  async return(): Promise<IteratorResult<StoredChange>> {
    this.#finished = true;
    return this.#end();
  }

  async #end(): Promise<IteratorResult<StoredChange>> {
    const fh = this.#fh;
    this.#fh = null;
    this.#release();
    await fh?.close();
    return DONE;
  }

  async #fail(err: unknown): Promise<never> {
    this.#finished = true;
    await this.#end().catch(() => {});
    throw err;
  }
}


type ReadStep =
  | { kind: "record"; offset: number; header: RecordHeader; buf: Buffer; at: number }
  | { kind: "torn"; offset: number };

/**
 * Reads intact records from `start` up to `limit`, a window at a time. A damaged or partial
 * record with no intact record after it is a torn tail; one with an intact record after it is
 * corruption, raised as CorruptError with the offset.
 */
class RecordReader {
  #win = Buffer.alloc(0);
  #winStart: number;
  #offset: number;
  readonly #fh: fsp.FileHandle;
  readonly #limit: number;
  readonly #location: string;

  constructor(fh: fsp.FileHandle, start: number, limit: number, location: string) {
    this.#fh = fh;
    this.#winStart = start;
    this.#offset = start;
    this.#limit = limit;
    this.#location = location;
  }

  /** Offset just past the last intact record returned. */
  get end(): number {
    return this.#offset;
  }

  /**
   * The next step. Answers synchronously while the record is in the current window, so that
   * reading a log costs no promise per record; returns a promise when it must read more.
   */
  next(): ReadStep | null | Promise<ReadStep | null> {
    const offset = this.#offset;
    if (offset >= this.#limit) return null;
    const probe = probeRecord(this.#win, offset - this.#winStart);
    if (probe.kind === "short") {
      if (offset + probe.needed > this.#limit) return this.#damaged(offset, "record is cut short");
      return this.#fill(offset, probe.needed).then(() => this.#afterFill(offset));
    }
    return this.#step(offset, probe);
  }

  #afterFill(offset: number): ReadStep | Promise<ReadStep> {
    const probe = probeRecord(this.#win, 0);
    if (probe.kind === "short") return this.#damaged(offset, "record is cut short");
    return this.#step(offset, probe);
  }

  #step(offset: number, probe: RecordProbe): ReadStep | Promise<ReadStep> {
    if (probe.kind === "short") throw new Error("unreachable");
    if (probe.kind === "bad") return this.#damaged(offset, probe.what, probe.version);
    this.#offset = offset + probe.length;
    return { kind: "record", offset, header: probe, buf: this.#win, at: offset - this.#winStart };
  }

  async #fill(offset: number, needed: number): Promise<void> {
    const size = Math.min(this.#limit - offset, Math.max(needed, READ_CHUNK));
    const buf = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const { bytesRead } = await this.#fh.read(buf, got, size - got, offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.#win = buf.subarray(0, got);
    this.#winStart = offset;
  }

  async #damaged(offset: number, what: string, version?: number): Promise<ReadStep> {
    const next = await findIntactRecord(this.#fh, offset + 1, this.#limit);
    if (next >= 0) {
      throw new CorruptError(this.#location, `${what}; intact records follow at offset ${next}, so this is not a torn tail`, {
        offset,
        ...(version !== undefined && { version }),
      });
    }
    return { kind: "torn", offset };
  }
}

/** Returns the offset of the first intact record at or after `from`, or -1. */
async function findIntactRecord(fh: fsp.FileHandle, from: number, limit: number): Promise<number> {
  const chunk = Buffer.allocUnsafe(READ_CHUNK);
  for (let pos = from; pos < limit; pos += READ_CHUNK - 3) {
    const { bytesRead } = await fh.read(chunk, 0, Math.min(READ_CHUNK, limit - pos), pos);
    const view = chunk.subarray(0, bytesRead);
    for (let i = view.indexOf(RECORD_MAGIC); i >= 0; i = view.indexOf(RECORD_MAGIC, i + 1)) {
      const at = pos + i;
      const header = Buffer.allocUnsafe(Math.min(limit - at, 32));
      await fh.read(header, 0, header.length, at);
      const p = probeRecord(header, 0);
      if (p.kind === "bad" || at + (p.kind === "short" ? p.needed : 0) > limit) continue;
      const whole = Buffer.allocUnsafe(p.kind === "short" ? p.needed : header.length);
      await fh.read(whole, 0, whole.length, at);
      if (probeRecord(whole, 0).kind === "ok") return at;
    }
    if (bytesRead < READ_CHUNK) break;
  }
  return -1;
}

/** Re-raises stream errors through `wrap`, so a vanished file gets a clear message; calls `done` at the end. */
async function* guardStream(src: AsyncIterable<Buffer>, wrap: (err: unknown) => Error, done: () => void): AsyncGenerator<Buffer> {
  try {
    yield* src;
  } catch (err) {
    throw wrap(err);
  } finally {
    done();
  }
}

// ------------------------------------------------------------ writer lock

/** The writer lock: a LOCK file naming the holder. A lock whose process is gone is taken over. */
class FileLock {
  readonly #file: string;
  readonly #token: string;

  private constructor(file: string, token: string) {
    this.#file = file;
    this.#token = token;
  }

  static acquire(file: string, log: Logger): FileLock {
    const token = JSON.stringify({ pid: process.pid, host: os.hostname(), since: new Date().toISOString() });
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = fs.openSync(file, "wx");
        try {
          fs.writeSync(fd, token);
        } finally {
          fs.closeSync(fd);
        }
        return new FileLock(file, token);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      let held: string;
      try {
        held = fs.readFileSync(file, "utf8");
      } catch {
        continue; // released meanwhile
      }
      let holder: { pid?: number; host?: string };
      try {
        holder = JSON.parse(held);
      } catch {
        holder = {};
      }
      const dir = path.dirname(file);
      if (holder.host !== undefined && holder.host !== os.hostname()) {
        throw new TidemarkError("E_LOCKED", `${dir} is locked by PID ${holder.pid} on host ${holder.host}`, {
          hint: `stop that writer; if it is gone for good, remove ${file}`,
        });
      }
      if (typeof holder.pid === "number" && isProcessAlive(holder.pid)) {
        throw new TidemarkError("E_LOCKED", `${dir} is locked by another writer, PID ${holder.pid}`, {
          hint: `stop PID ${holder.pid} first (only one process may write a backup); if no such process runs, remove ${file}`,
        });
      }
      log.warn({ file, pid: holder.pid }, "taking over a lock left by a process that is gone");
      // Remove the stale lock only if it is still the one read above.
      try {
        if (fs.readFileSync(file, "utf8") === held) fs.rmSync(file);
      } catch {
        // gone already
      }
    }
    throw new TidemarkError("E_LOCKED", `could not take the writer lock ${file}`, { hint: "another writer is starting; try again" });
  }

  release(): void {
    try {
      if (fs.readFileSync(this.#file, "utf8") === this.#token) fs.rmSync(this.#file);
    } catch {
      // already gone
    }
  }
}

/** E_RANGE for versions no single generation holds, naming what is held. */
function rangeError(where: string, gens: readonly RetainedLog[], lo: number, hi: number): TidemarkError {
  const first = gens.find((g) => g.state.records > 0)?.state.firstVersion ?? 0;
  const head = gens.at(-1)!.state.head;
  const damaged = gens.find((g, i) => g.damage && lo > g.damage.intactVersion && (gens[i + 1]?.state.firstVersion ?? Infinity) > lo);
  if (damaged) {
    return new TidemarkError("E_CORRUPT", `version ${lo} cannot be read: ${damaged.damage!.message}`, {
      hint: `versions up to ${damaged.damage!.intactVersion} of that generation restore; so do the later generations (tidemark status lists them)`,
    });
  }
  if (lo >= first && hi <= head && lo <= hi) {
    return new TidemarkError("E_RANGE", `versions ${lo}..${hi} of ${where} lie in two generations (a compaction between them)`, {
      hint: "ask for the versions of one generation at a time (tidemark status lists them)",
    });
  }
  const v = lo < first ? lo : hi;
  return new TidemarkError("E_RANGE", `version ${v} is not held by ${where}: it holds ${first}..${head}`, {
    hint: `pick a version from ${first} to ${head}`,
  });
}
