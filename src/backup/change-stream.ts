/**
 * Streams the live changes of a generation's log, in order, up to a version: what
 * `Backend.streamChanges` yields, for every backend.
 */
import { RecordType, decodeRecord, type DecodedRecord, type SnapshotRef } from "../format/record-codec.js";
import { decodeSnapshot, type DecodeOptions } from "../format/snapshot-codec.js";
import type { Keyring } from "../format/keyring.js";
import type { StoredChange, StoredSnapshot } from "../model/change.js";
import { TidemarkError } from "../util/errors.js";
import type { ChangeRange } from "./backup.js";
import type { Generation } from "./generation.js";
import { stepError } from "./generation.js";
import type { ReadStep, RecordReader } from "./log-reader.js";
import type { ReaderCount } from "./reader-count.js";
import type { Storage } from "./storage.js";

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });
/** What ChangeStream's steps return at the end of the stream. */
const END = Symbol("end");

/** A change iterator that can also give changes without a promise while they are at hand. */
export interface SyncChanges extends AsyncIterator<StoredChange> {
  /** The next change when it needs no read, else undefined: then `next()` gives what comes. */
  takeSync(): StoredChange | undefined;
}

/**
 * The live changes of a log up to a version, continuations of that version included. A change
 * is held back until the next record is read, because a rewind record directly after it
 * cancels it.
 *
 * A hand-written iterator rather than an async generator: it answers from the reader's window
 * without a promise hop per record.
 */
export class ChangeStream implements SyncChanges {
  readonly #reader: RecordReader;
  readonly #storage: Storage;
  readonly #to: number;
  readonly #keyring: Keyring;
  readonly #readers: ReaderCount;
  readonly #release: () => void;
  #held: StoredChange | null = null;
  #finished = false;
  /** A read that takeSync() started; next() awaits it. */
  #waiting: Promise<ReadStep | null> | null = null;
  /** An error that takeSync() met; next() raises it. */
  #error: unknown = undefined;

  constructor(reader: RecordReader, storage: Storage, to: number, keyring: Keyring, readers: ReaderCount) {
    this.#reader = reader;
    this.#storage = storage;
    this.#to = to;
    this.#keyring = keyring;
    this.#readers = readers;
    this.#release = readers.enter();
  }

  next(): Promise<IteratorResult<StoredChange>> {
    if (this.#error !== undefined) return this.#fail(this.#error);
    if (this.#finished) return this.#end();
    try {
      for (;;) {
        const step = this.#waiting ?? this.#reader.next();
        this.#waiting = null;
        if (step instanceof Promise) {
          return step.then((s) => {
            const out = this.#feed(s);
            return out === undefined ? this.next() : this.#result(out);
          }, (err: unknown) => this.#fail(err));
        }
        const out = this.#feed(step);
        if (out !== undefined) return this.#result(out);
      }
    } catch (err) {
      return this.#fail(err);
    }
  }

  /**
   * The next change when it can be had without waiting for a read, else undefined: then
   * `next()` gives it (or the end, or the error). Saves a consumer a promise per change.
   */
  takeSync(): StoredChange | undefined {
    if (this.#finished || this.#waiting || this.#error !== undefined) return undefined;
    try {
      for (;;) {
        const step = this.#reader.next();
        if (step instanceof Promise) {
          this.#waiting = step;
          return undefined;
        }
        const out = this.#feed(step);
        if (out === END) return undefined;
        if (out !== undefined) return out;
      }
    } catch (err) {
      this.#error = err;
      return undefined;
    }
  }

  #result(out: StoredChange | typeof END): Promise<IteratorResult<StoredChange>> {
    return out === END ? this.#end() : Promise.resolve({ done: false, value: out });
  }

  /** Takes one reader step; returns a change once there is one to give, or END. */
  #feed(step: ReadStep | null): StoredChange | typeof END | undefined {
    if (step === null) {
      this.#finished = true;
      const last = this.#held;
      this.#held = null;
      return last && last.version <= this.#to ? last : END;
    }
    // The log was read whole at open: anything but an intact record now is damage.
    if (step.kind !== "record") throw stepError(step);
    const rec = decodeRecord(step.buf, step.at, step.header, step.segment, this.#keyring, step.segmentOffset);
    if (rec.type === RecordType.Rewind) {
      this.#held = null;
      return undefined;
    }
    // A redo takes the place of the change held back: that one is cancelled.
    if (rec.replacesLast) this.#held = null;
    const ready = this.#held;
    this.#held = this.#change(rec);
    if (!ready) return undefined;
    // A change past `to` that no rewind cancelled ends it: until then a continuation of `to`
    // may still come (after a later change and its rewind).
    if (ready.version > this.#to) {
      this.#finished = true;
      this.#held = null;
      return END;
    }
    return ready;
  }

  #change(rec: DecodedRecord): StoredChange {
    const change: { -readonly [K in keyof StoredChange]: StoredChange[K] } = { version: rec.version, timestamp: rec.timestamp };
    if (rec.snapshot) change.snapshot = storedSnapshot(this.#storage, rec.snapshot, rec.version, this.#keyring, this.#readers);
    if (rec.transaction) change.transaction = rec.transaction;
    if (rec.continuation) change.continuation = true;
    if (rec.captured) change.captured = rec.captured;
    return change;
  }

  async return(): Promise<IteratorResult<StoredChange>> {
    this.#finished = true;
    // A read takeSync() started and nobody will await: its failure no longer matters.
    this.#waiting?.catch(() => {});
    this.#waiting = null;
    return this.#end();
  }

  async #end(): Promise<IteratorResult<StoredChange>> {
    this.#release();
    await this.#reader.close();
    return DONE;
  }

  async #fail(err: unknown): Promise<never> {
    this.#finished = true;
    await this.#end().catch(() => {});
    throw err;
  }
}

/** A snapshot blob, opened on demand, decoded and verified as it streams. */
function storedSnapshot(storage: Storage, ref: SnapshotRef, version: number, keyring: Keyring, readers: ReaderCount): StoredSnapshot {
  const location = `${storage.location} snapshot ${ref.ref}`;
  return {
    size: ref.size,
    open(options: DecodeOptions = {}): AsyncIterable<Buffer> {
      return openSnapshot(storage, ref, location, version, keyring, readers.enter(), options);
    },
  };
}

/** Decodes a blob, read with positioned reads where the storage offers them; then releases it. */
async function* openSnapshot(
  storage: Storage,
  ref: SnapshotRef,
  location: string,
  version: number,
  keyring: Keyring,
  release: () => void,
  options: DecodeOptions,
): AsyncGenerator<Buffer> {
  try {
    const source = storage.readBlob ? await storage.readBlob(ref.ref) : storage.openBlob(ref.ref);
    yield* decodeSnapshot(source, ref, location, version, keyring, options);
  } finally {
    release();
  }
}

/**
 * The generation that holds `range`: the newest whose versions cover it. The live one (last in
 * `gens`) serves anything from its base on; a retained one serves older versions. Throws
 * E_RANGE, or E_CORRUPT for versions lost to damage.
 */
export function generationFor(gens: readonly Generation[], range: ChangeRange, where: string): Generation {
  const to = range.to ?? gens.at(-1)!.state.head;
  const lo = Math.min(range.from ?? to, to);
  const hi = Math.max(range.from ?? to, to);
  for (let i = gens.length - 1; i >= 0; i--) {
    const g = gens[i]!;
    if (g.state.records > 0 && g.state.firstVersion <= lo && g.state.head >= hi) return g;
  }
  throw rangeError(where, gens, lo, hi);
}

/** E_RANGE for versions no single generation holds, naming what is held. */
function rangeError(where: string, gens: readonly Generation[], lo: number, hi: number): TidemarkError {
  const first = gens.find((g) => g.state.records > 0)?.state.firstVersion ?? 0;
  const head = gens.at(-1)!.state.head;
  const damaged = gens.find((g, i) => g.damage && lo > g.damage.intactVersion && (gens[i + 1]?.state.firstVersion ?? Infinity) > lo);
  if (damaged) {
    return new TidemarkError("E_CORRUPT", `version ${lo} cannot be read: ${damaged.damage!.message}`, {
      hint: `versions up to ${damaged.damage!.intactVersion} of that generation restore; so do the later generations (tidemark status lists them)`,
    });
  }
  if (head === 0 && first === 0) {
    return new TidemarkError("E_RANGE", `version ${lo} is not held by ${where}: the backup is empty`, { hint: "ingest changes first" });
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
