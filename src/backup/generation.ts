/**
 * One generation of a backup, a base and the changes after it, as the core knows it: its
 * record log scanned into a {@link LogState}, where its intact records end, and what is
 * wrong with it, if anything.
 */
import { checkSnapshotFrames } from "../format/snapshot-codec.js";
import { decodeRecord, FLAG_CONTINUATION, FLAG_REPLACES_LAST, probeRecord, recordSnapshotRef, RecordType, type DecodedRecord, type RecordHeader } from "../format/record-codec.js";
import type { Keyring } from "../format/keyring.js";
import { CorruptError, TidemarkError } from "../util/errors.js";
import type { Damage } from "./backup.js";
import { LogState, type LogEntry } from "./log-state.js";
import { RecordReader, isTornTail, type ReadStep } from "./log-reader.js";
import type { StagedGeneration, Storage } from "./storage.js";

/** Bytes at the end of a log that a crash left mid-append. */
export interface TornTail {
  readonly location: string;
  readonly offset: number;
  readonly bytes: number;
}

/** A generation, scanned. */
export interface Generation {
  readonly id: number;
  state: LogState;
  /** End of its last intact record: appends go here, and readers read up to here. */
  end: number;
  /** When its first change was made, once read. */
  firstTimestamp?: number;
  /** Damage in its log, which it is read up to (read-only opens, and older generations). */
  readonly damage?: Damage;
  /** A torn tail after `end`, until the writer drops it. */
  torn?: TornTail;
  /** The CRC-32 of the log's first `end` bytes, where known (from its index): what the next index starts from. */
  crc?: { readonly end: number; readonly value: number };
}

/** The state machine's view of an intact record; no key is needed for it. */
export function entryOf(buf: Buffer, at: number, offset: number, header: RecordHeader, location: string): LogEntry {
  const snapshot = recordSnapshotRef(buf, at, header, location);
  const continuation = header.type === RecordType.Change && (header.flags & FLAG_CONTINUATION) !== 0;
  const replacesLast = header.type === RecordType.Change && (header.flags & FLAG_REPLACES_LAST) !== 0;
  return { type: header.type, version: header.version, position: offset, length: header.length, ...(snapshot && { snapshot }), ...(continuation && { continuation: true }), ...(replacesLast && { replacesLast: true }) };
}

/** The error for bytes that are not an intact record, where reading cannot go on. */
export function stepError(step: Exclude<ReadStep, { kind: "record" }>, detail = ""): CorruptError {
  const what = step.kind === "short" ? "record is cut short" : step.what;
  return new CorruptError(step.segment, `${what}${detail}`, {
    offset: step.segmentOffset,
    ...(step.kind === "bad" && step.version !== undefined && { version: step.version }),
  });
}

/**
 * Reads a generation's log from the start and rebuilds its state. A torn tail ends it. Damage
 * throws, unless `salvage`: then the generation ends before the damaged record, and `damage`
 * says where it is. With `from` (the state of the log's first `from.end` bytes, from its
 * index), only the records after those are read.
 */
export async function scanGeneration(storage: Storage, id: number, size: number, salvage: boolean, from?: { readonly state: LogState; readonly end: number }): Promise<Generation> {
  const where = `${storage.location} (generation ${id})`;
  const state = from?.state ?? new LogState(where);
  const start = from?.end ?? 0;
  const reader = new RecordReader(storage.readLog(id, start, size), start);
  /** Where the record being read starts. */
  let at = start;
  try {
    for (;;) {
      at = reader.end;
      let step = reader.next();
      if (step instanceof Promise) step = await step;
      if (step === null) return { id, state, end: reader.end };
      if (step.kind === "record") {
        state.apply(entryOf(step.buf, step.at, step.offset, step.header, step.segment));
        continue;
      }
      // An intact header vouches for the record's length: a record inside its payload (a
      // blob parameter holding one) is not one of the log's.
      const declared = step.kind === "short" ? step.needed : (step.length ?? 1);
      const next = await reader.intactRecordAfter(step.offset + declared - 1);
      if (next === undefined && !storage.atomicAppends) {
        const tail = (await readLogBytes(storage, id, step.offset, size - step.offset)).bytes;
        if (isTornTail(step, tail, step.offset)) {
          return { id, state, end: at, torn: { location: step.segment, offset: step.segmentOffset, bytes: size - step.offset } };
        }
      }
      throw stepError(
        step,
        next !== undefined
          ? `; intact records follow at offset ${next}, so this is not a torn tail`
          : step.kind === "short"
            ? " (appends to this store are all or nothing, so this is damage, not a torn tail)"
            : "; the record is complete, so this is damage, not a torn tail",
      );
    }
  } catch (err) {
    if (!(salvage && err instanceof CorruptError)) throw err;
    // The damaged record may have been the rewind of the head (or its redo): unless it is
    // known to be the change after the head, the head is not trusted either.
    if (state.last && err.version !== state.head + 1) {
      state.apply({ type: RecordType.Rewind, version: state.head, position: at, length: 0 });
    }
    return { id, state, end: at, damage: { location: err.location, ...(err.offset !== undefined && { offset: err.offset }), message: err.message, intactVersion: state.head } };
  } finally {
    await reader.close();
  }
}

/** The state of a log held in memory (one the core has just put together). */
export function stateOf(content: Buffer, location: string): LogState {
  return applyRecords(new LogState(location), content, 0, location);
}

/** Applies the records in `content`, which sits at offset `offset` of a log, to `state`. */
function applyRecords(state: LogState, content: Buffer, offset: number, location: string): LogState {
  for (let at = 0; at < content.length; ) {
    const probe = probeRecord(content, at);
    if (probe.kind !== "ok") throw new CorruptError(location, `new log does not parse: ${probe.kind}`, { offset: offset + at });
    state.apply(entryOf(content, at, offset + at, probe, location));
    at += probe.length;
  }
  return state;
}

/** Reads `length` bytes of generation `id`'s log from `from`. */
export async function readLogBytes(storage: Storage, id: number, from: number, length: number): Promise<{ bytes: Buffer; segment: string }> {
  const parts: Buffer[] = [];
  let segment = storage.location;
  for await (const chunk of storage.readLog(id, from, from + length)) {
    parts.push(chunk.bytes);
    segment = chunk.segment;
  }
  return { bytes: parts.length === 1 ? parts[0]! : Buffer.concat(parts), segment };
}

/** Reads and decodes the record `e` of generation `id`, opening it with `keyring`. */
export async function readRecord(storage: Storage, id: number, e: LogEntry, keyring: Keyring): Promise<DecodedRecord> {
  const { bytes, segment } = await readLogBytes(storage, id, e.position, e.length);
  const probe = probeRecord(bytes, 0);
  if (probe.kind !== "ok") {
    throw new CorruptError(segment, probe.kind === "short" ? "record is cut short" : probe.what, { offset: e.position, version: e.version });
  }
  return decodeRecord(bytes, 0, probe, segment, keyring);
}

/**
 * The timestamp of record `e`, or undefined when it is sealed with a key that was not given:
 * status and retention show and keep what they cannot date. Damage still throws.
 */
export async function timestampOf(storage: Storage, id: number, e: LogEntry, keyring: Keyring): Promise<number | undefined> {
  try {
    return (await readRecord(storage, id, e, keyring)).timestamp;
  } catch (err) {
    if (err instanceof TidemarkError && err.code === "E_KEY") return undefined;
    throw err;
  }
}

/** Where the live record of `version` ends in `g`'s log, when it is the head or the change before it (known without a read). */
export function knownEndOfRecord(g: Generation, version: number): number | undefined {
  for (const e of [g.state.headEntry, g.state.prevEntry]) if (e?.version === version) return e.position + e.length;
  return undefined;
}

/** Where the live record of `version` ends in generation `g`'s log. */
export async function endOfLiveRecord(storage: Storage, g: Generation, version: number): Promise<number> {
  const known = knownEndOfRecord(g, version);
  if (known !== undefined) return known;
  // Not the head or the change before it: walk the log's records.
  const reader = new RecordReader(storage.readLog(g.id, 0, g.end), 0);
  let found = -1;
  /** Where the record of `version` before the last one ended: a rewind of the last returns there. */
  let before = -1;
  try {
    for (let n = 1; ; n++) {
      // The walk runs beside a writer's acks: it gives the event loop a turn now and then.
      if (n % 2048 === 0) await new Promise(setImmediate);
      let step = reader.next();
      if (step instanceof Promise) step = await step;
      if (step === null) break;
      if (step.kind !== "record") throw stepError(step, " (a record verified at open no longer reads)");
      if (step.header.version !== version) continue;
      // A redo replaces the record before it: a rewind of the redo leaves no live record of the version.
      if (step.header.type === RecordType.Change) [before, found] = [step.header.flags & FLAG_REPLACES_LAST ? -1 : found, step.offset + step.header.length];
      else [found, before] = [before, -1];
    }
  } finally {
    await reader.close();
  }
  if (found < 0) throw new Error(`no live record of version ${version} in ${storage.location} (generation ${g.id})`);
  return found;
}

/**
 * Checks the frames of generation `g`'s base snapshot (no key needed): the damage, as an error
 * a writer refuses to open with, or null when it is whole or there is no base.
 */
export async function checkBase(storage: Storage, g: Generation): Promise<CorruptError | null> {
  const base = g.state.snapshots[0];
  if (!base || g.state.firstEntry?.version !== base.version) return null;
  try {
    await checkSnapshotFrames(storage.openBlob(base.ref), `${storage.location} snapshot ${base.ref}`, base.version);
    return null;
  } catch (err) {
    if (!(err instanceof CorruptError)) throw err;
    return err;
  }
}

/** Damage, as status reports it, for a damaged base: nothing after `intactVersion` restores. */
export function damageOf(err: CorruptError | null, intactVersion: number): Damage | null {
  if (!err) return null;
  return { location: err.location, ...(err.offset !== undefined && { offset: err.offset }), message: err.message, intactVersion, snapshot: true };
}

/**
 * Generation `id` as compaction writes it to follow `old`: `baseRecord` (the change at the
 * base version, pointing to the new snapshot), then a copy of every record of `old` after its
 * live record of that version. {@link stageNextGeneration} copies what `old` holds so far,
 * while writers go on; {@link commitNextGeneration}, with writers held, copies the few records
 * appended since and makes the new generation live.
 */
export interface NextGeneration {
  readonly id: number;
  /** The generation it follows, and where in its log the copy has got to. */
  readonly old: Generation;
  readonly copiedTo: number;
  /** The log so far, and what it means. */
  readonly head: Buffer;
  readonly state: LogState;
  /** Written out of sight already, where the storage can stage. */
  readonly staged?: StagedGeneration;
}

/**
 * Copies what `old` holds after `baseVersion` into a new generation, staged where the storage
 * can. `tailStart`, where the base's record ends, when the caller knows it (else the log is walked).
 */
export async function stageNextGeneration(storage: Storage, old: Generation, baseVersion: number, baseRecord: Buffer, id: number, tailStart?: number): Promise<NextGeneration> {
  const copiedTo = old.end;
  tailStart ??= await endOfLiveRecord(storage, old, baseVersion);
  const tail = (await readLogBytes(storage, old.id, tailStart, copiedTo - tailStart)).bytes;
  const head = Buffer.concat([baseRecord, tail]);
  const state = stateOf(head, whereNext(storage, id));
  const staged = storage.stageGeneration ? await storage.stageGeneration(id, head) : undefined;
  return { id, old, copiedTo, head, state, ...(staged && { staged }) };
}

/**
 * Copies the records `next.old` gained since it was staged and makes `next` the newest
 * generation. The caller holds the writers back. Returns the new generation's state and end.
 */
export async function commitNextGeneration(storage: Storage, next: NextGeneration): Promise<{ state: LogState; end: number }> {
  const old = next.old;
  const more = old.end > next.copiedTo ? (await readLogBytes(storage, old.id, next.copiedTo, old.end - next.copiedTo)).bytes : Buffer.alloc(0);
  const state = applyRecords(next.state, more, next.head.length, whereNext(storage, next.id));
  if (next.staged) await next.staged.commit(more);
  else await storage.createGeneration(next.id, more.length > 0 ? Buffer.concat([next.head, more]) : next.head);
  return { state, end: next.head.length + more.length };
}

function whereNext(storage: Storage, id: number): string {
  return `${storage.location} (generation ${id})`;
}
