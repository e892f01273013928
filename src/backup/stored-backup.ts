/**
 * The backup core: the one implementation of {@link Backend} over any {@link Storage}.
 *
 * Identity and settings, the generations manifest, the version-rule guards, sealing, damage,
 * retention, garbage collection and status are decided here, once; a storage only keeps the
 * bytes. Writes are serialised by a mutex; readers stream at any time, from the view they
 * opened with.
 */
import { FLAG_CONTINUATION, FLAG_REPLACES_LAST, RecordType, encodeChangeRecord, encodeRewindRecord, type DecodedRecord, type SnapshotRef } from "../format/record-codec.js";
import { PLAIN, type Codec } from "../format/sealing.js";
import type { StoredChange } from "../model/change.js";
import { retainedGenerations, type RetentionPolicy } from "../model/retention.js";
import { canFollow } from "../model/version-rules.js";
import { BackendError, CorruptError, TidemarkError, asBackendError } from "../util/errors.js";
import { silentLogger, type Logger } from "../util/logger.js";
import { Mutex } from "../util/mutex.js";
import type { Backend, BackendHead, BackendOptions, BackendStatus, ChangeRange, ChangeToStore, CompactionBase, Damage } from "./backup.js";
import { ChangeStream, generationFor } from "./change-stream.js";
import { readIdentity, readManifest, writeIdentity, writeManifest, type Identity } from "./documents.js";
import { checkBase, commitNextGeneration, damageOf, knownEndOfRecord, readRecord, stageNextGeneration, stateOf, timestampOf, type Generation, type NextGeneration } from "./generation.js";
import { openGeneration, saveIndex } from "./log-index.js";
import type { LogEntry, LogState } from "./log-state.js";
import { RecordReader } from "./log-reader.js";
import { ReaderCount } from "./reader-count.js";
import { SnapshotBlobs } from "./snapshot-blobs.js";
import { checkMode, codecFor, initialSettings, retentionFor, shownSettings, updatedSettings } from "./settings.js";
import type { Storage, WriterLock } from "./storage.js";

/** Opens the backup kept in `storage`, as `options.mode` says; closes the storage if it fails. */
export async function openStoredBackup(storage: Storage, options: BackendOptions): Promise<StoredBackup> {
  const backup = new StoredBackup(storage, options);
  try {
    await backup.open();
  } catch (err) {
    await backup.close().catch(() => {});
    throw err;
  }
  return backup;
}

/** The backup core; see the module comment. */
export class StoredBackup implements Backend {
  readonly kind: string;
  readonly location: string;
  readonly #storage: Storage;
  readonly #options: BackendOptions;
  readonly #log: Logger;
  readonly #mutex = new Mutex();
  readonly #readers = new ReaderCount();
  readonly #writable: boolean;
  #identity!: Identity;
  #codec: Codec = PLAIN;
  #retention: RetentionPolicy = {};
  #lock: WriterLock | null = null;
  #live!: Generation;
  /** Older generations that the manifest keeps, oldest first; read-only. */
  #retained: Generation[] = [];
  #nextId = 1;
  readonly #blobs: SnapshotBlobs;
  /** Read-only opens: damage in the live base snapshot, once `status({ checkBase })` checked it. */
  #baseDamage: Damage | null | undefined;
  #closed = false;
  /** Set once a writer's open succeeded: only then does its close write the log index. */
  #opened = false;
  /** Set after a write fails in a way that leaves the stored state unknown. */
  #broken: Error | null = null;
  #compacting = false;
  /** addChange calls waiting on a snapshot upload; synchronous writes must not overlap them. */
  #asyncWrites = 0;
  /** Set while a compaction copies the live log's tail and switches generations. */
  #switching = false;
  /** Superseded generations to delete once no reader in this process may still read them. */
  readonly #garbage = new Set<number>();

  /** addChange for a change without a snapshot, durable when it returns (storages that can block). */
  readonly addChangeSync?: (change: ChangeToStore) => void;
  /** rewind, done when it returns (storages that can block). */
  readonly rewindSync?: () => void;

  constructor(storage: Storage, options: BackendOptions) {
    this.#storage = storage;
    this.#options = options;
    this.kind = storage.kind;
    this.location = storage.location;
    this.#writable = options.mode !== "read";
    this.#log = (options.log ?? silentLogger).child({ backend: storage.kind, location: storage.location });
    this.#blobs = new SnapshotBlobs(storage, this.#log);
    if (storage.appendSync) {
      this.addChangeSync = (change) => this.#addChangeSync(change);
      this.rewindSync = () => this.#rewindSync();
    }
  }

  /** Opens (or, in create mode, creates) the backup. Called by {@link openStoredBackup}. */
  async open(): Promise<void> {
    const storage = this.#storage;
    if (this.#options.mode === "create") await this.#create();
    const identity = await readIdentity(storage, this.#options.allowIncomplete ?? false);
    this.#codec = codecFor(identity, this.#options, this.location);
    this.#retention = retentionFor(identity, this.#options);
    if (this.#writable) this.#lock ??= await storage.lock();
    const updated = updatedSettings(identity, this.#codec, this.#options);
    this.#identity = updated ?? identity;
    const kept = new Set(await readManifest(storage, identity.legacy === true));
    if (this.#writable) {
      // A backup from before document checksums gets them: the manifest first, since the
      // identity is what says that they are checked.
      if (identity.legacy) await writeManifest(this.#storage, [...kept]);
      if (updated || identity.legacy) await writeIdentity(this.#storage, this.#identity);
    }

    const listing = await storage.listGenerations();
    const live = listing.at(-1);
    if (!live) throw new CorruptError(this.location, "the backup has no generation (no log)");
    this.#nextId = live.id + 1;
    // Readers read a damaged live log up to the damage; a writer refuses it. Damage in an older
    // generation limits only restores into it, for readers and writers alike.
    this.#live = await openGeneration(storage, live.id, live.size, !this.#writable, this.#log);
    this.#retained = [];
    for (const g of listing.slice(0, -1)) {
      if (kept.has(g.id)) this.#retained.push(await openGeneration(storage, g.id, g.size, true, this.#log));
    }
    for (const g of this.#retained) {
      if (g.damage) this.#log.warn({ ...g.damage }, "an older generation is damaged: reading it up to the damage only");
    }
    await this.#blobs.load();
    if (!this.#writable) return this.#openedForReading();

    const torn = this.#live.torn;
    if (torn) {
      this.#log.warn({ ...torn }, `dropping a torn record at the end of the log: ${torn.bytes} bytes at offset ${torn.offset} of ${torn.location} (an append cut short by a crash, never acknowledged)`);
      await storage.truncate(this.#live.id, this.#live.end);
      delete this.#live.torn;
    }
    // The single writer tidies up after crashes: superseded generations, orphan blobs.
    for (const g of listing.slice(0, -1)) if (!kept.has(g.id)) this.#garbage.add(g.id);
    await this.#checkHead();
    await this.#collectGarbage();
    this.#opened = true;
  }

  async #create(): Promise<void> {
    if (await this.#storage.readDocument("tidemark.json")) {
      throw new TidemarkError("E_EXISTS", `a backup already exists at ${this.location}`, { hint: `inspect it with: tidemark status ${this.location}` });
    }
    await this.#storage.create();
    this.#lock = await this.#storage.lock();
    // The identity comes last: a location holds a backup once it holds one whole.
    await this.#storage.createGeneration(1, Buffer.alloc(0));
    this.#identity = { created: new Date().toISOString(), ...initialSettings(this.#options) };
    await writeIdentity(this.#storage, this.#identity);
  }

  /** A read-only open: what cannot be read is reported, and the rest stays readable. */
  #openedForReading(): void {
    // Nothing of the live log is readable: the newest older generation stands in for it.
    const newest = this.#retained.at(-1);
    if (this.#live.damage && this.#live.state.records === 0 && newest) {
      this.#retained.pop();
      this.#live = { ...newest, damage: { ...this.#live.damage, intactVersion: newest.state.head } };
    }
    if (this.#live.damage) this.#log.warn({ ...this.#live.damage }, "the live log is damaged: reading it up to the damage only");
    if (this.#live.torn) this.#log.warn({ ...this.#live.torn }, "ignoring a torn record at the end of the log (an append cut short by a crash)");
  }

  /**
   * A writer appends only to a head it can read back: the head record opens with the keys
   * given, and the live base snapshot is intact. Throws otherwise.
   */
  async #checkHead(): Promise<void> {
    const s = this.#live.state;
    if (s.headEntry) s.headTimestamp = (await readRecord(this.#storage, this.#live.id, s.headEntry, this.#codec.keyring)).timestamp;
    // A redo of the head follows the change before it: its timestamp clamps the redo's.
    if (s.prevVersion !== null && s.prevEntry && s.prevTimestamp === undefined) {
      s.prevTimestamp = (await readRecord(this.#storage, this.#live.id, s.prevEntry, this.#codec.keyring)).timestamp;
    }
    const damage = await checkBase(this.#storage, this.#live);
    if (damage) throw damage;
  }

  head(): BackendHead {
    return { version: this.#live.state.head, prevVersion: this.#live.state.prevVersion };
  }

  async status(options: { readonly checkBase?: boolean } = {}): Promise<BackendStatus> {
    this.#checkOpen();
    const s = this.#live.state;
    if (options.checkBase && this.#baseDamage === undefined) {
      this.#baseDamage = this.#writable ? null : damageOf(await checkBase(this.#storage, this.#live), this.#retained.at(-1)?.state.head ?? 0);
    }
    if (s.headTimestamp === undefined && s.headEntry) s.headTimestamp = await timestampOf(this.#storage, this.#live.id, s.headEntry, this.#codec.keyring);
    const snapshotBytes = this.#blobs.bytes(this.#referencedBlobs());
    const generations = [];
    for (const g of this.#generations()) {
      if (g.state.records === 0 && !g.damage) continue;
      const firstTimestamp = await this.#firstTimestamp(g);
      generations.push({
        baseVersion: g.state.firstEntry?.snapshot ? g.state.firstVersion : 0,
        firstVersion: g.state.firstVersion,
        lastVersion: g.state.head,
        ...(firstTimestamp !== undefined && { firstTimestamp }),
        ...(g.damage && g !== this.#live && { damage: g.damage }),
      });
    }
    const damage = this.#live.damage ?? this.#baseDamage ?? undefined;
    const writer = await this.#storage.writer?.();
    return {
      version: s.head,
      prevVersion: s.prevVersion,
      baseVersion: s.baseVersion,
      firstVersion: generations.find((g) => g.lastVersion > 0)?.firstVersion ?? 0,
      records: s.records,
      bytes: this.#generations().reduce((n, g) => n + g.end, 0) + snapshotBytes,
      snapshotBytes,
      generations,
      ...(s.headTimestamp !== undefined && { headTimestamp: s.headTimestamp }),
      ...(this.#live.torn && { tornTail: this.#live.torn }),
      ...(damage && { damage }),
      settings: shownSettings(this.#identity),
      ...(writer && { writer }),
    };
  }

  /** Every generation held, oldest first: the retained ones, then the live one. */
  #generations(): Generation[] {
    return [...this.#retained, this.#live];
  }

  /** Blob names that a live record of any generation points to. */
  #referencedBlobs(): Set<string> {
    return new Set(this.#generations().flatMap((g) => g.state.snapshots.map((x) => x.ref)));
  }

  async #firstTimestamp(g: Generation): Promise<number | undefined> {
    if (g.firstTimestamp === undefined && g.state.firstEntry) g.firstTimestamp = await timestampOf(this.#storage, g.id, g.state.firstEntry, this.#codec.keyring);
    return g.firstTimestamp;
  }

  streamChanges(range: ChangeRange = {}): AsyncIterable<StoredChange> {
    this.#checkOpen();
    if (this.#live.state.head === 0) return { [Symbol.asyncIterator]: () => ({ next: async () => ({ done: true, value: undefined }) }) };
    const g = generationFor(this.#generations(), range, this.location);
    const { to, start } = g.state.plan(range);
    const storage = this.#storage;
    const keyring = this.#codec.keyring;
    const readers = this.#readers;
    const limit = g.end;
    return {
      [Symbol.asyncIterator]: () => new ChangeStream(new RecordReader(storage.readLog(g.id, start, limit), start), storage, to, keyring, readers),
    };
  }

  addChange(change: ChangeToStore): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const replaced = this.#checkFollows(change);
      checkMode(this.#identity, change, this.location);
      if (!change.snapshot) {
        await this.#append(this.#encode(change), change.version, change.timestamp);
        if (replaced?.snapshot) await this.#blobs.delete(replaced.snapshot);
        return;
      }
      this.#asyncWrites++;
      let ref: SnapshotRef | undefined;
      try {
        ref = await this.#blobs.put(change.version, change.snapshot, this.#codec);
        await this.#append(this.#encode(change, ref), change.version, change.timestamp, ref.ref);
        this.#blobs.settled(ref.ref);
        if (replaced?.snapshot) await this.#blobs.delete(replaced.snapshot);
      } finally {
        // A failed append may still have stored its record (an S3 PUT whose answer was lost):
        // the blob stays out of collection here, and the next writer's open decides.
        this.#asyncWrites--;
      }
    });
  }

  addChanges(changes: readonly ChangeToStore[]): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const records = changes.map((c, i) => {
        if (c.snapshot || c.version !== this.#live.state.head + 1 + i) throw new Error(`${this.kind} backend: addChanges takes consecutive changes after the head, without snapshots`);
        checkMode(this.#identity, c, this.location);
        return this.#encode(c);
      });
      if (records.length === 0) return;
      const g = this.#live;
      await this.#storage.append(g.id, Buffer.concat(records));
      records.forEach((rec, i) => this.#applied(g, rec, changes[i]!.version, changes[i]!.timestamp, undefined, RecordType.Change));
    });
  }

  #addChangeSync(change: ChangeToStore): void {
    this.#checkWritable();
    this.#checkNoAsyncWrite();
    if (change.snapshot) throw new Error(`${this.kind} backend: addChangeSync takes no snapshot; use addChange`);
    const replaced = this.#checkFollows(change);
    checkMode(this.#identity, change, this.location);
    this.#appendSync(this.#encode(change), change.version, change.timestamp);
    if (replaced?.snapshot) void this.#blobs.delete(replaced.snapshot);
  }

  /** The record of a change; the caller has checked it follows the head and fits the backup's mode. */
  #encode(change: ChangeToStore, snapshot?: SnapshotRef): Buffer {
    const { version, timestamp, transaction, continuation, captured, replacesLast } = change;
    return encodeChangeRecord({ version, timestamp, transaction, continuation, captured, snapshot, replacesLast }, this.#codec);
  }

  lastChange(): Promise<DecodedRecord | null> {
    return this.#mutex.run(async () => {
      this.#checkOpen();
      const s = this.#live.state;
      if (!s.last || s.prevVersion === null) return null;
      return readRecord(this.#storage, this.#live.id, s.last, this.#codec.keyring);
    });
  }

  lastTimestamps(): { readonly head?: number; readonly prev?: number } {
    const s = this.#live.state;
    return { head: s.headTimestamp, prev: s.prevTimestamp };
  }

  rewind(): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const last = this.#rewindable();
      await this.#append(encodeRewindRecord(last.version, Date.now(), this.#codec), last.version, undefined, undefined, RecordType.Rewind);
      if (last.snapshot) await this.#blobs.delete(last.snapshot);
    });
  }

  #rewindSync(): void {
    this.#checkWritable();
    this.#checkNoAsyncWrite();
    const last = this.#rewindable();
    this.#appendSync(encodeRewindRecord(last.version, Date.now(), this.#codec), last.version, undefined, undefined, RecordType.Rewind);
    if (last.snapshot) void this.#blobs.delete(last.snapshot);
  }

  /** The last change, if it may be rewound; throws E_REWIND otherwise. */
  #rewindable(): LogEntry {
    const s = this.#live.state;
    if (s.prevVersion === null || !s.last) {
      throw new TidemarkError(
        "E_REWIND",
        s.head === 0 ? `nothing to rewind: ${this.location} is empty` : `change ${s.head} cannot be rewound: only the last change can be, and only once`,
        { hint: "tidemark status shows the head; a host that is behind the backup must be restored" },
      );
    }
    return s.last;
  }

  /** Checks that `change` may follow the head; for a redo, returns the change it replaces. */
  #checkFollows(change: ChangeToStore): LogEntry | undefined {
    const replaced = change.replacesLast ? this.#rewindable() : undefined;
    if (replaced && (change.version !== replaced.version || change.continuation)) {
      throw new Error(`${this.kind} backend: a redo of version ${change.version} cannot replace change ${replaced.version}`);
    }
    const head = replaced ? this.#live.state.prevVersion! : this.#live.state.head;
    if (!canFollow(head, change.version, change.snapshot !== undefined, change.continuation === true)) {
      throw new Error(`${this.kind} backend: change ${change.version} cannot follow head ${head}; the version rules should have refused it`);
    }
    return replaced;
  }

  #checkNoAsyncWrite(): void {
    if (this.#asyncWrites > 0) throw new Error(`${this.kind} backend: a synchronous write overlaps an asynchronous one; use one API at a time`);
    // The tail copied into the new generation is read before the switch: an append between
    // the two would be acknowledged into the generation being superseded, and lost.
    if (this.#switching) {
      throw new TidemarkError("E_UNAVAILABLE", `${this.location}: a compaction is switching to a new generation; nothing was written`, {
        hint: "retry the change in a moment (the switch takes milliseconds)",
      });
    }
  }

  /** Appends one sealed record to the live generation, durably, then applies it to the state. */
  async #append(rec: Buffer, version: number, timestamp?: number, snapshot?: string, type: RecordType = RecordType.Change): Promise<void> {
    const g = this.#live;
    await this.#storage.append(g.id, rec);
    this.#applied(g, rec, version, timestamp, snapshot, type);
  }

  #appendSync(rec: Buffer, version: number, timestamp?: number, snapshot?: string, type: RecordType = RecordType.Change): void {
    const g = this.#live;
    this.#storage.appendSync!(g.id, rec);
    this.#applied(g, rec, version, timestamp, snapshot, type);
  }

  #applied(g: Generation, rec: Buffer, version: number, timestamp: number | undefined, snapshot: string | undefined, type: RecordType): void {
    const continuation = (rec[6]! & FLAG_CONTINUATION) !== 0;
    const replacesLast = type === RecordType.Change && (rec[6]! & FLAG_REPLACES_LAST) !== 0;
    // Built field by field, not by conditional spreads: this runs on every ack.
    const entry: { -readonly [K in keyof LogEntry]: LogEntry[K] } = { type, version, position: g.end, length: rec.length };
    if (timestamp !== undefined) entry.timestamp = timestamp;
    if (snapshot) entry.snapshot = snapshot;
    if (continuation) entry.continuation = true;
    if (replacesLast) entry.replacesLast = true;
    g.state.apply(entry);
    g.end += rec.length;
  }

  async compact(base: CompactionBase): Promise<void> {
    this.#checkWritable();
    if (this.#compacting) throw new TidemarkError("E_BACKEND", `[${this.kind}] compact ${this.location}: a compaction is already running`);
    this.#compacting = true;
    let ref: SnapshotRef | undefined;
    try {
      const s = this.#live.state;
      if (base.version > s.head || (base.version === s.head && s.prevVersion !== null) || base.version < s.firstVersion) {
        throw new Error(`compaction base ${base.version} is not a settled version of ${s.firstVersion}..${s.head}`);
      }
      // Where the base's record ends, while it is still the head or the change before it (a
      // shadow compaction's base is): it stays there, since only the last change can be
      // rewound and the base is not it. Found later, it would take a walk of the whole log.
      const tail = { from: this.#live, start: knownEndOfRecord(this.#live, base.version) };
      // The snapshot is opened only now that the backup takes it.
      ref = await this.#blobs.put(base.version, base.snapshot(), this.#codec);
      await this.#install(base, ref, tail);
      this.#blobs.settled(ref.ref);
      await this.#collectGarbage();
    } catch (err) {
      // Unless the switch is in doubt (the new generation, pointing to it, may be live).
      if (ref && !this.#broken && !this.#referencedBlobs().has(ref.ref)) {
        this.#blobs.settled(ref.ref);
        await this.#blobs.delete(ref.ref);
      }
      throw asBackendError(this.kind, "compact", this.location, err);
    } finally {
      this.#compacting = false;
    }
  }

  /**
   * Writes the new generation (base record, then every record after the base) and switches to
   * it. Writers wait only for the switch: the tail settled so far is copied (and staged, where
   * the storage can) while they go on; under the mutex only the records appended since are.
   */
  async #install(base: CompactionBase, ref: SnapshotRef, tail: { from: Generation; start: number | undefined }): Promise<void> {
    const old = this.#live;
    const id = this.#nextId;
    // The generation about to be superseded is listed as retained first, so that a crash right
    // after the switch keeps it; pruning by the retention policy comes after.
    await this.#mutex.run(async () => {
      this.#checkLive(old);
      await writeManifest(this.#storage, [...this.#retained.map((g) => g.id), old.id]);
    });
    const baseRecord = encodeChangeRecord({ version: base.version, timestamp: base.timestamp, snapshot: ref }, this.#codec);
    const next = await stageNextGeneration(this.#storage, old, base.version, baseRecord, id, tail.from === old ? tail.start : undefined);
    try {
      await this.#mutex.run(async () => {
        this.#checkLive(old);
        this.#switching = true;
        try {
          await this.#switchTo(next, base);
        } finally {
          this.#switching = false;
        }
      });
    } finally {
      if (this.#live === old) await next.staged?.discard().catch(() => {});
    }
    // Both logs are summarised while they are fresh, so that the next open reads no record twice.
    await this.#mutex.run(async () => {
      await this.#prune();
      if (!this.#garbage.has(this.#live.id)) await saveIndex(this.#storage, this.#live, this.#log);
    });
    // The superseded log no longer changes: its CRC (the bytes appended since it was opened) is
    // read and its index written without holding writers back, counted as a reader so that no
    // collection deletes it meanwhile.
    const reading = this.#readers.enter();
    try {
      if (!this.#garbage.has(old.id)) await saveIndex(this.#storage, old, this.#log);
    } finally {
      reading();
    }
  }

  /** Throws unless `g` is still the live generation (a reset replaces it). */
  #checkLive(g: Generation): void {
    this.#checkWritable();
    if (this.#live !== g) throw new TidemarkError("E_BACKEND", `[${this.kind}] compact ${this.location}: the backup was reset while compacting; nothing was installed`);
  }

  async #switchTo(next: NextGeneration, base: CompactionBase): Promise<void> {
    const old = next.old;
    let installed: { state: LogState; end: number };
    try {
      installed = await commitNextGeneration(this.#storage, next);
    } catch (err) {
      // Whether the new generation exists decides which one is live: find out.
      const exists = await this.#storage.listGenerations().then((l) => l.some((g) => g.id === next.id), () => true);
      if (exists) {
        this.#broken = new BackendError(this.kind, "compact", this.location, "switching to the new generation failed half-way", {
          cause: err,
          hint: "restart tidemark; the backup restores to the same head either way",
        });
        throw this.#broken;
      }
      throw err;
    }
    this.#nextId = next.id + 1;
    this.#retained.push(old);
    this.#live = { id: next.id, state: installed.state, end: installed.end, firstTimestamp: base.timestamp };
    installed.state.headTimestamp = old.state.headTimestamp;
  }

  /** Drops the older generations the retention policy no longer asks for. */
  async #prune(): Promise<void> {
    const infos = [];
    for (const g of this.#generations()) infos.push({ id: g.id, baseTimestamp: await this.#firstTimestamp(g) });
    const keep = retainedGenerations(infos, this.#retention, Date.now());
    const dropped = this.#retained.filter((g) => !keep.has(g.id));
    if (dropped.length === 0) return;
    this.#retained = this.#retained.filter((g) => keep.has(g.id));
    await writeManifest(this.#storage, this.#retained.map((g) => g.id));
    // What is no longer listed is garbage, deleted by #collectGarbage (or the next writer).
    for (const g of dropped) this.#garbage.add(g.id);
  }

  /**
   * Deletes superseded generations and the blobs no record of a kept generation points to.
   * While a reader in this process is active, they stay (a reader that started before a
   * switch may still read them), and go when the last reader finishes. While a kept
   * generation is damaged, no blob goes: what its unreadable records point to is unknown.
   */
  async #collectGarbage(): Promise<void> {
    const later = () => {
      if (!this.#closed) void this.#mutex.run(() => this.#collectGarbage()).catch((err: unknown) => this.#log.warn({ err }, "could not delete superseded storage; the next writer removes it"));
    };
    if (this.#readers.deferring(later)) return;
    for (const id of [...this.#garbage]) {
      try {
        await this.#storage.deleteGeneration(id);
        this.#garbage.delete(id);
      } catch (err) {
        this.#log.warn({ err, generation: id }, "could not delete a superseded generation; the next writer removes it");
      }
    }
    const damaged = this.#generations().find((g) => g.damage);
    if (damaged) {
      this.#log.warn({ generation: damaged.id }, "a kept generation is damaged: keeping every snapshot, since what its unreadable records point to is unknown");
      return;
    }
    await this.#blobs.collect(this.#referencedBlobs());
  }

  reset(): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const id = this.#nextId++;
      // Nothing is kept from here on; the new, empty generation then makes the rest garbage.
      await writeManifest(this.#storage, []);
      await this.#storage.createGeneration(id, Buffer.alloc(0));
      for (const g of this.#generations()) this.#garbage.add(g.id);
      this.#live = { id, state: stateOf(Buffer.alloc(0), this.location), end: 0 };
      this.#retained = [];
      await this.#collectGarbage();
    });
  }

  markIncomplete(what: string | undefined): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const { incomplete: _was, ...rest } = this.#identity;
      this.#identity = { ...rest, ...(what !== undefined && { incomplete: what }) };
      await writeIdentity(this.#storage, this.#identity);
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#mutex.run(async () => {
      if (this.#opened && !this.#broken) await saveIndex(this.#storage, this.#live, this.#log);
      await this.#lock?.release().catch((err: unknown) => this.#log.warn({ err }, "could not release the writer lock"));
      this.#lock = null;
      await this.#storage.close();
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new TidemarkError("E_CLOSED", `[${this.kind}] ${this.location}: backend is closed`);
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (!this.#writable) throw new TidemarkError("E_CLOSED", `[${this.kind}] ${this.location}: opened read-only`);
    if (this.#broken) throw this.#broken;
    this.#lock?.check();
  }
}
