/**
 * The log index: a small summary of a generation's log that the writer keeps, so that an open
 * need not frame and check every record (docs/format.md, "Log index").
 *
 * It says: the first `covered` bytes of generation `id`'s log have CRC-32 `crc`, and mean this
 * {@link LogState}. It is written at compaction (for the new generation and the one it
 * supersedes) and when a writer closes cleanly; it is never made durable, since it is never
 * trusted over the log: at open the covered bytes are read and their CRC compared (one pass,
 * no framing), the head record's CRC too, and only then is the state taken; the records after
 * `covered` are scanned as before. An index that is missing, torn, of another generation,
 * longer than the log, or whose CRCs do not match is ignored, and the log is scanned whole,
 * so damage is found and reported exactly as without one.
 */
import { crc32 } from "../format/crc32.js";
import { RecordType } from "../format/record-codec.js";
import type { Logger } from "../util/logger.js";
import { readLogBytes, scanGeneration, type Generation } from "./generation.js";
import { LogState, type LogEntry } from "./log-state.js";
import type { Storage } from "./storage.js";

const MAGIC = 0x494d4454; // "TDMI", little-endian
const FORMAT = 1;
const HEADER = 64;
/** Entry flags: bit 0 continuation, bit 1 redo (replaces the change before it), bit 2 has a snapshot ref. */
const E_CONTINUATION = 1;
const E_REPLACES = 2;
const E_SNAPSHOT = 4;

/**
 * Scans generation `id` (`size` bytes), starting from its index where the storage keeps one
 * that holds; as {@link scanGeneration} otherwise. Says at debug level which it did.
 */
export async function openGeneration(storage: Storage, id: number, size: number, salvage: boolean, log: Logger): Promise<Generation> {
  const from = storage.readIndex ? await indexedState(storage, id, size, log) : null;
  const g = await scanGeneration(storage, id, size, salvage, from ?? undefined);
  if (from) g.crc = { end: from.end, value: from.crc };
  return g;
}

/** Writes generation `g`'s index, unless it is damaged, torn or empty. Failures are only logged. */
export async function saveIndex(storage: Storage, g: Generation, log: Logger): Promise<void> {
  try {
    if (!storage.writeIndex || g.damage || g.torn || g.end === 0 || g.crc?.end === g.end) return;
    const headCrc = g.state.headEntry ? (await readLogBytes(storage, g.id, g.state.headEntry.position + g.state.headEntry.length - 4, 4)).bytes.readUInt32LE(0) : 0;
    // Only what was appended since the index it was opened from is read again.
    const known = g.crc && g.crc.end <= g.end ? g.crc : { end: 0, value: 0 };
    let crc = known.value;
    if (g.end > known.end) for await (const chunk of storage.readLog(g.id, known.end, g.end)) crc = crc32(chunk.bytes, 0, chunk.bytes.length, crc);
    await storage.writeIndex(g.id, encodeIndex(g.id, g.end, crc, headCrc, g.state));
    g.crc = { end: g.end, value: crc };
  } catch (err) {
    log.warn({ err, generation: g.id }, "could not write the log index; the next open scans the log");
  }
}

/** The index's bytes (docs/format.md, "Log index"). */
export function encodeIndex(id: number, covered: number, crc: number, headCrc: number, s: LogState): Buffer {
  const entries = [s.firstEntry, s.prevEntry, s.headEntry];
  const parts: Buffer[] = [];
  const head = Buffer.alloc(HEADER);
  head.writeUInt32LE(MAGIC, 0);
  head.writeUInt8(FORMAT, 4);
  head.writeUInt8(s.prevVersion === null ? 0 : 1, 5);
  head.writeUInt32LE(id, 8);
  head.writeBigUInt64LE(BigInt(covered), 12);
  head.writeUInt32LE(crc >>> 0, 20);
  head.writeUInt32LE(headCrc >>> 0, 24);
  head.writeBigUInt64LE(BigInt(s.head), 28);
  head.writeBigUInt64LE(BigInt(s.prevVersion ?? 0), 36);
  head.writeBigUInt64LE(BigInt(s.firstVersion), 44);
  head.writeUInt32LE(s.records, 52);
  head.writeUInt32LE(s.snapshots.length, 56);
  head.writeUInt8(entries.reduce((m, e, i) => m | (e ? 1 << i : 0), 0), 60);
  parts.push(head);
  for (const e of entries) if (e) parts.push(encodeEntry(e));
  for (const x of s.snapshots) {
    const ref = Buffer.from(x.ref, "utf8");
    const b = Buffer.alloc(18);
    b.writeBigUInt64LE(BigInt(x.version), 0);
    b.writeBigUInt64LE(BigInt(x.position), 8);
    b.writeUInt16LE(ref.length, 16);
    parts.push(b, ref);
  }
  const body = Buffer.concat(parts);
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(crc32(body) >>> 0, 0);
  return Buffer.concat([body, tail]);
}

function encodeEntry(e: LogEntry): Buffer {
  const ref = Buffer.from(e.snapshot ?? "", "utf8");
  const b = Buffer.alloc(24);
  b.writeUInt8(e.type, 0);
  b.writeUInt8((e.continuation ? E_CONTINUATION : 0) | (e.replacesLast ? E_REPLACES : 0) | (e.snapshot !== undefined ? E_SNAPSHOT : 0), 1);
  b.writeBigUInt64LE(BigInt(e.version), 2);
  b.writeBigUInt64LE(BigInt(e.position), 10);
  b.writeUInt32LE(e.length, 18);
  b.writeUInt16LE(ref.length, 22);
  return Buffer.concat([b, ref]);
}

/** What an index holds, before it is checked against the log. */
interface DecodedIndex {
  readonly id: number;
  readonly covered: number;
  readonly crc: number;
  readonly headCrc: number;
  readonly state: LogState;
}

/** Decodes an index; throws an Error saying what is wrong with it. */
export function decodeIndex(bytes: Buffer, location: string): DecodedIndex {
  if (bytes.length < HEADER + 4) throw new Error(`${bytes.length} bytes, shorter than an index`);
  if (bytes.readUInt32LE(bytes.length - 4) !== crc32(bytes, 0, bytes.length - 4) >>> 0) throw new Error("its CRC does not match");
  if (bytes.readUInt32LE(0) !== MAGIC || bytes.readUInt8(4) !== FORMAT) throw new Error("not an index of this format");
  let at = HEADER;
  const u64 = (o: number) => {
    const v = bytes.readBigUInt64LE(o);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error("a field is out of range");
    return Number(v);
  };
  const text = (n: number) => {
    if (at + n > bytes.length - 4) throw new Error("an entry runs past its end");
    const s = bytes.toString("utf8", at, at + n);
    at += n;
    return s;
  };
  const state = new LogState(location);
  state.head = u64(28);
  state.prevVersion = bytes.readUInt8(5) ? u64(36) : null;
  state.firstVersion = u64(44);
  state.records = bytes.readUInt32LE(52);
  const snapshots = bytes.readUInt32LE(56);
  const present = bytes.readUInt8(60);
  const entries: (LogEntry | null)[] = [];
  for (let i = 0; i < 3; i++) {
    if (!(present & (1 << i))) {
      entries.push(null);
      continue;
    }
    if (at + 24 > bytes.length - 4) throw new Error("an entry runs past its end");
    const type = bytes.readUInt8(at) as RecordType;
    const flags = bytes.readUInt8(at + 1);
    const version = u64(at + 2);
    const position = u64(at + 10);
    const length = bytes.readUInt32LE(at + 18);
    const refLength = bytes.readUInt16LE(at + 22);
    at += 24;
    const ref = text(refLength);
    if (type !== RecordType.Change) throw new Error("a live entry is not a change");
    entries.push({ type, version, position, length, ...(flags & E_SNAPSHOT && { snapshot: ref }), ...(flags & E_CONTINUATION && { continuation: true }), ...(flags & E_REPLACES && { replacesLast: true }) });
  }
  [state.firstEntry, state.prevEntry, state.headEntry] = entries as [LogEntry | null, LogEntry | null, LogEntry | null];
  // The change a rewind would cancel is the head, while one is allowed (LogState keeps it so).
  state.last = state.prevVersion !== null ? state.headEntry : null;
  for (let i = 0; i < snapshots; i++) {
    if (at + 18 > bytes.length - 4) throw new Error("a snapshot runs past its end");
    const version = u64(at);
    const position = u64(at + 8);
    const refLength = bytes.readUInt16LE(at + 16);
    at += 18;
    state.snapshots.push({ version, position, ref: text(refLength) });
  }
  if (at !== bytes.length - 4) throw new Error("bytes follow its last entry");
  return { id: bytes.readUInt32LE(8), covered: u64(12), crc: bytes.readUInt32LE(20), headCrc: bytes.readUInt32LE(24), state };
}

/**
 * The state generation `id`'s index vouches for, and where it ends, once checked against the
 * log; null (and a log line saying why) when there is no index or it does not hold.
 */
async function indexedState(storage: Storage, id: number, size: number, log: Logger): Promise<{ state: LogState; end: number; crc: number } | null> {
  const where = `${storage.location} (generation ${id})`;
  let bytes: Buffer | undefined;
  try {
    bytes = await storage.readIndex!(id);
  } catch (err) {
    log.info({ err, generation: id }, "could not read the log index; scanning the whole log");
    return null;
  }
  if (!bytes) return null;
  const ignore = (why: string) => {
    log.info({ generation: id }, `ignoring the log index of generation ${id} (${why}); scanning the whole log`);
    return null;
  };
  let index: DecodedIndex;
  try {
    index = decodeIndex(bytes, where);
  } catch (err) {
    return ignore((err as Error).message);
  }
  const s = index.state;
  if (index.id !== id) return ignore(`it is generation ${index.id}'s`);
  if (index.covered > size) return ignore(`it covers ${index.covered} bytes, the log holds ${size}`);
  const inside = (e: { position: number; length?: number } | null) => !e || e.position + (e.length ?? 32) <= index.covered;
  if (![s.firstEntry, s.prevEntry, s.headEntry, ...s.snapshots].every(inside) || (s.records > 0) !== (s.headEntry !== null)) return ignore("its entries do not fit the bytes it covers");
  // The head record's own CRC, then every covered byte: an index is never trusted over the log.
  const h = s.headEntry;
  if (h && (await readLogBytes(storage, id, h.position + h.length - 4, 4)).bytes.readUInt32LE(0) !== index.headCrc) return ignore("the head record's CRC differs");
  let crc = 0;
  for await (const chunk of storage.readLog(id, 0, index.covered)) crc = crc32(chunk.bytes, 0, chunk.bytes.length, crc);
  if (crc >>> 0 !== index.crc) return ignore("the CRC of the bytes it covers differs");
  log.debug({ generation: id, covered: index.covered, after: size - index.covered }, `generation ${id}: opened from its log index, scanning the ${size - index.covered} bytes after it`);
  return { state: s, end: index.covered, crc: index.crc };
}
