/**
 * The binary record format for one change, as every backend stores it.
 *
 * docs/format.md describes it byte by byte. In short: a 28-byte header with its own CRC-32,
 * the body, and a CRC-32 over everything before it. The header CRC lets a reader trust the
 * body length before it reads the body, so a corrupt length never makes it read garbage.
 */
import { crc32 } from "./crc32.js";
import type { Param, Params, Statement } from "./change.js";
import { CorruptError, InputError } from "./errors.js";

/** "TDMK": the first four bytes of every record. */
export const RECORD_MAGIC = Buffer.from("TDMK", "latin1");
/** The record format version this code writes and reads. */
export const RECORD_FORMAT = 1;
/** Bytes before the body. */
export const RECORD_HEADER_SIZE = 28;
/** Bytes a record adds around its body. */
export const RECORD_OVERHEAD = RECORD_HEADER_SIZE + 4;
/** The largest body accepted, so that a damaged length never causes a huge allocation. */
export const MAX_BODY_SIZE = 1 << 30;

/** What a record says. */
export const RecordType = { Change: 1, Rewind: 2 } as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

/** Header flag bits. */
export const FLAG_SNAPSHOT = 1;
export const FLAG_TRANSACTION = 2;

const PARAM_NULL = 0;
const PARAM_REAL = 1;
const PARAM_INTEGER = 2;
const PARAM_TEXT = 3;
const PARAM_BLOB = 4;

const STATEMENT_TEXT = 0;
const STATEMENT_POSITIONAL = 1;
const STATEMENT_NAMED = 2;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** Where a change's snapshot blob is and what it must hash to. */
export interface SnapshotRef {
  /** Size of the SQLite file in bytes (before any compression). */
  readonly size: number;
  /** CRC-32 of the SQLite file's bytes. */
  readonly crc32: number;
  /** The backend's name for the blob (a file name or an object key suffix). */
  readonly ref: string;
}

/** A decoded record header. */
export interface RecordHeader {
  readonly kind: "ok";
  readonly type: RecordType;
  readonly flags: number;
  readonly compression: number;
  readonly version: number;
  readonly keyId: number;
  readonly bodyLength: number;
  /** Total record length: header, body and trailing CRC. */
  readonly length: number;
}

/** A decoded record. */
export interface DecodedRecord {
  readonly type: RecordType;
  readonly version: number;
  readonly timestamp: number;
  readonly snapshot?: SnapshotRef;
  readonly transaction?: Statement[];
}

/** What encodeChangeRecord needs. */
export interface ChangeRecordInput {
  readonly version: number;
  readonly timestamp: number;
  readonly snapshot?: SnapshotRef;
  readonly transaction?: readonly Statement[];
}

/** Outcome of looking for a whole, intact record at an offset. */
export type RecordProbe =
  /** An intact record: the probe is its header. */
  | RecordHeader
  /** Fewer bytes than the record needs: a torn append, or the end of the data. */
  | { readonly kind: "short"; readonly needed: number }
  /** Bytes that are not a valid record. */
  | { readonly kind: "bad"; readonly what: string; readonly version?: number };

// ---------------------------------------------------------------- encoding

/** Encodes a change record. Throws InputError for a value that cannot be stored. */
export function encodeChangeRecord(change: ChangeRecordInput): Buffer {
  checkVersion(change.version);
  const w = new BodyWriter();
  w.u64(change.timestamp);
  let flags = 0;
  if (change.snapshot) {
    flags |= FLAG_SNAPSHOT;
    w.u64(change.snapshot.size);
    w.u32(change.snapshot.crc32);
    w.shortString(change.snapshot.ref);
  }
  if (change.transaction) {
    flags |= FLAG_TRANSACTION;
    w.u32(change.transaction.length);
    change.transaction.forEach((st, i) => writeStatement(w, st, i));
  }
  return frame(RecordType.Change, flags, change.version, w.finish());
}

/** Encodes a rewind record: it cancels the change of the same version right before it. */
export function encodeRewindRecord(version: number, timestamp: number): Buffer {
  checkVersion(version);
  const w = new BodyWriter();
  w.u64(timestamp);
  return frame(RecordType.Rewind, 0, version, w.finish());
}

function checkVersion(version: number): void {
  if (!Number.isSafeInteger(version) || version < 1) {
    throw new InputError(`version must be an integer >= 1, got ${version}`);
  }
}

function frame(type: RecordType, flags: number, version: number, body: Buffer): Buffer {
  if (body.length > MAX_BODY_SIZE) {
    throw new InputError(`change ${version} is ${body.length} bytes encoded; the limit is ${MAX_BODY_SIZE}`, {
      hint: "split the transaction, or send the data as a snapshot",
    });
  }
  const out = Buffer.allocUnsafe(RECORD_OVERHEAD + body.length);
  RECORD_MAGIC.copy(out, 0);
  out[4] = RECORD_FORMAT;
  out[5] = type;
  out[6] = flags;
  out[7] = 0; // compression: none
  writeU64(out, 8, version);
  out.writeUInt32LE(0, 16); // key id: not encrypted
  out.writeUInt32LE(body.length, 20);
  out.writeUInt32LE(crc32(out, 0, 24), 24);
  body.copy(out, RECORD_HEADER_SIZE);
  const end = RECORD_HEADER_SIZE + body.length;
  out.writeUInt32LE(crc32(out, 0, end), end);
  return out;
}

function writeStatement(w: BodyWriter, st: Statement, index: number): void {
  if (typeof st === "string") {
    w.u8(STATEMENT_TEXT);
    w.longString(st);
    return;
  }
  const params = st.params;
  if (params === undefined) {
    w.u8(STATEMENT_TEXT);
    w.longString(st.sql);
  } else if (Array.isArray(params)) {
    w.u8(STATEMENT_POSITIONAL);
    w.longString(st.sql);
    w.u32(params.length);
    params.forEach((p, j) => writeParam(w, p, index, String(j)));
  } else {
    const entries = Object.entries(params);
    w.u8(STATEMENT_NAMED);
    w.longString(st.sql);
    w.u32(entries.length);
    for (const [name, p] of entries) {
      w.shortString(name);
      writeParam(w, p, index, name);
    }
  }
}

function writeParam(w: BodyWriter, p: Param, index: number, name: string): void {
  if (p === null) {
    w.u8(PARAM_NULL);
  } else if (typeof p === "number") {
    w.u8(PARAM_REAL);
    w.f64(p);
  } else if (typeof p === "bigint") {
    if (p < INT64_MIN || p > INT64_MAX) {
      throw new InputError(`transaction[${index}].params[${name}]: bigint ${p} does not fit in a signed 64-bit integer`);
    }
    w.u8(PARAM_INTEGER);
    w.i64(p);
  } else if (typeof p === "string") {
    w.u8(PARAM_TEXT);
    w.longString(p);
  } else if (p instanceof Uint8Array) {
    w.u8(PARAM_BLOB);
    w.bytes(p);
  } else {
    throw new InputError(
      `transaction[${index}].params[${name}]: expected a number, string, null, bigint or Uint8Array, got ${typeof p}`,
    );
  }
}

/** A growable buffer for record bodies. */
class BodyWriter {
  #buf = Buffer.allocUnsafe(256);
  #pos = 0;

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.#pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.#buf.copy(next, 0, 0, this.#pos);
    this.#buf = next;
  }
  u8(v: number): void {
    this.#room(1);
    this.#buf[this.#pos++] = v;
  }
  u32(v: number): void {
    this.#room(4);
    this.#buf.writeUInt32LE(v, this.#pos);
    this.#pos += 4;
  }
  u64(v: number): void {
    this.#room(8);
    writeU64(this.#buf, this.#pos, v);
    this.#pos += 8;
  }
  i64(v: bigint): void {
    this.#room(8);
    this.#buf.writeBigInt64LE(v, this.#pos);
    this.#pos += 8;
  }
  f64(v: number): void {
    this.#room(8);
    this.#buf.writeDoubleLE(v, this.#pos);
    this.#pos += 8;
  }
  /** A string of up to 65535 UTF-8 bytes, with a u16 length. */
  shortString(s: string): void {
    const max = s.length * 3;
    this.#room(2 + max);
    const n = this.#buf.write(s, this.#pos + 2, "utf8");
    if (n > 0xffff) throw new InputError(`name "${s.slice(0, 40)}…" is longer than 65535 bytes`);
    this.#buf.writeUInt16LE(n, this.#pos);
    this.#pos += 2 + n;
  }
  /** A string with a u32 length. */
  longString(s: string): void {
    const max = s.length * 3;
    this.#room(4 + max);
    const n = this.#buf.write(s, this.#pos + 4, "utf8");
    this.#buf.writeUInt32LE(n, this.#pos);
    this.#pos += 4 + n;
  }
  bytes(b: Uint8Array): void {
    this.#room(4 + b.length);
    this.#buf.writeUInt32LE(b.length, this.#pos);
    this.#buf.set(b, this.#pos + 4);
    this.#pos += 4 + b.length;
  }
  finish(): Buffer {
    return this.#buf.subarray(0, this.#pos);
  }
}

function writeU64(buf: Buffer, at: number, v: number): void {
  buf.writeUInt32LE(v % 0x1_0000_0000 >>> 0, at);
  buf.writeUInt32LE(Math.floor(v / 0x1_0000_0000), at + 4);
}

function readU64(buf: Buffer, at: number): number {
  const lo = buf.readUInt32LE(at);
  const hi = buf.readUInt32LE(at + 4);
  if (hi > 0x1fffff) return Number.NaN; // beyond 2^53: not a value we write
  return hi * 0x1_0000_0000 + lo;
}

// ---------------------------------------------------------------- decoding

const MAGIC_U32 = RECORD_MAGIC.readUInt32LE(0);

/**
 * Looks for a whole, intact record at `offset` of `buf`: it checks the magic, that all bytes
 * are present, and the record CRC; the header CRC is checked when the record CRC fails or the
 * record runs past the data, to tell a torn append from damage. It decodes nothing else.
 */
export function probeRecord(buf: Buffer, offset: number): RecordProbe {
  const avail = buf.length - offset;
  if (avail < RECORD_HEADER_SIZE) {
    // Even a short prefix can be recognised as garbage when its magic is wrong.
    const n = Math.min(avail, 4);
    if (buf.compare(RECORD_MAGIC, 0, n, offset, offset + n) !== 0) return { kind: "bad", what: "no record magic" };
    return { kind: "short", needed: RECORD_HEADER_SIZE };
  }
  if (buf.readUInt32LE(offset) !== MAGIC_U32) return { kind: "bad", what: "no record magic" };
  const bodyLength = buf.readUInt32LE(offset + 20);
  const end = offset + RECORD_HEADER_SIZE + bodyLength;
  // The common case costs one CRC: a record CRC that matches vouches for the header too.
  if (bodyLength <= MAX_BODY_SIZE && end + 4 <= buf.length && buf.readUInt32LE(end) === crc32(buf, offset, end)) {
    const header = parseHeader(buf, offset);
    return typeof header === "string" ? { kind: "bad", what: header } : header;
  }
  if (buf.readUInt32LE(offset + 24) !== crc32(buf, offset, offset + 24)) {
    return { kind: "bad", what: "record header checksum mismatch" };
  }
  const header = parseHeader(buf, offset);
  if (typeof header === "string") return { kind: "bad", what: header };
  if (avail < header.length) return { kind: "short", needed: header.length };
  return { kind: "bad", what: "record checksum mismatch", version: header.version };
}

/** Parses a header whose CRC is already verified; returns a problem description instead of throwing. */
function parseHeader(buf: Buffer, offset: number): RecordHeader | string {
  const format = buf[offset + 4]!;
  if (format !== RECORD_FORMAT) return `record format ${format} is not supported (this tidemark reads format ${RECORD_FORMAT})`;
  const type = buf[offset + 5]!;
  if (type !== RecordType.Change && type !== RecordType.Rewind) return `unknown record type ${type}`;
  const version = readU64(buf, offset + 8);
  if (!(version >= 1)) return "record version out of range";
  const bodyLength = buf.readUInt32LE(offset + 20);
  if (bodyLength > MAX_BODY_SIZE) return `record body length ${bodyLength} exceeds ${MAX_BODY_SIZE}`;
  return {
    kind: "ok",
    type: type as RecordType,
    flags: buf[offset + 6]!,
    compression: buf[offset + 7]!,
    version,
    keyId: buf.readUInt32LE(offset + 16),
    bodyLength,
    length: RECORD_OVERHEAD + bodyLength,
  };
}

/** The timestamp of the intact record at `offset`, without decoding the rest of its body. */
export function recordTimestamp(buf: Buffer, offset: number, header: RecordHeader): number {
  if (header.compression !== 0 || header.keyId !== 0) return decodeRecord(buf, offset, header, "").timestamp;
  return readU64(buf, offset + RECORD_HEADER_SIZE);
}

/**
 * Decodes the intact record at `offset` (as found by {@link probeRecord}). A body that does not
 * parse raises CorruptError naming `location`, the offset and the version.
 */
export function decodeRecord(buf: Buffer, offset: number, header: RecordHeader, location: string): DecodedRecord {
  const r = new BodyReader(buf, offset, header, location);
  if (header.compression !== 0) r.fail(`record compression ${header.compression} is not supported`);
  if (header.keyId !== 0) r.fail(`record is encrypted with key id ${header.keyId}, which this tidemark cannot read`);
  const timestamp = r.u64();
  const record: { -readonly [K in keyof DecodedRecord]: DecodedRecord[K] } = { type: header.type, version: header.version, timestamp };
  if (header.type === RecordType.Change) {
    if (header.flags & FLAG_SNAPSHOT) record.snapshot = { size: r.u64(), crc32: r.u32(), ref: r.shortString() };
    if (header.flags & FLAG_TRANSACTION) {
      const count = r.u32();
      const transaction: Statement[] = new Array(count);
      for (let i = 0; i < count; i++) transaction[i] = readStatement(r);
      record.transaction = transaction;
    }
  }
  r.end();
  return record;
}

function readStatement(r: BodyReader): Statement {
  const kind = r.u8();
  const sql = r.longString();
  switch (kind) {
    case STATEMENT_TEXT:
      return sql;
    case STATEMENT_POSITIONAL: {
      const n = r.u32();
      const params: Param[] = new Array(n);
      for (let i = 0; i < n; i++) params[i] = readParam(r);
      return { sql, params };
    }
    case STATEMENT_NAMED: {
      const n = r.u32();
      const params: Record<string, Param> = {};
      for (let i = 0; i < n; i++) {
        const name = r.shortString();
        params[name] = readParam(r);
      }
      return { sql, params: params as Params };
    }
    default:
      return r.fail(`unknown statement kind ${kind}`);
  }
}

function readParam(r: BodyReader): Param {
  const tag = r.u8();
  switch (tag) {
    case PARAM_NULL:
      return null;
    case PARAM_REAL:
      return r.f64();
    case PARAM_INTEGER:
      return r.i64();
    case PARAM_TEXT:
      return r.longString();
    case PARAM_BLOB:
      return r.bytes();
    default:
      return r.fail(`unknown parameter tag ${tag}`);
  }
}

/** Bounds-checked reads over a record body. */
class BodyReader {
  #pos: number;
  readonly #buf: Buffer;
  readonly #end: number;
  readonly #offset: number;
  readonly #version: number;
  readonly #location: string;

  constructor(buf: Buffer, offset: number, header: RecordHeader, location: string) {
    this.#buf = buf;
    this.#offset = offset;
    this.#pos = offset + RECORD_HEADER_SIZE;
    this.#end = this.#pos + header.bodyLength;
    this.#version = header.version;
    this.#location = location;
  }
  fail(what: string): never {
    throw new CorruptError(this.#location, what, { offset: this.#offset, version: this.#version });
  }
  #take(n: number): number {
    const at = this.#pos;
    if (n > this.#end - at) this.fail("record body is shorter than its contents");
    this.#pos = at + n;
    return at;
  }
  u8(): number {
    return this.#buf[this.#take(1)]!;
  }
  u32(): number {
    return this.#buf.readUInt32LE(this.#take(4));
  }
  u64(): number {
    const v = readU64(this.#buf, this.#take(8));
    if (Number.isNaN(v)) this.fail("64-bit value out of range");
    return v;
  }
  i64(): bigint {
    return this.#buf.readBigInt64LE(this.#take(8));
  }
  f64(): number {
    return this.#buf.readDoubleLE(this.#take(8));
  }
  shortString(): string {
    const n = this.#buf.readUInt16LE(this.#take(2));
    const at = this.#take(n);
    return this.#buf.toString("utf8", at, at + n);
  }
  longString(): string {
    const n = this.u32();
    const at = this.#take(n);
    return this.#buf.toString("utf8", at, at + n);
  }
  bytes(): Buffer {
    const n = this.u32();
    const at = this.#take(n);
    // A copy, so a decoded change never pins the whole read buffer.
    return Buffer.from(this.#buf.subarray(at, at + n));
  }
  end(): void {
    if (this.#pos !== this.#end) this.fail(`record body has ${this.#end - this.#pos} unexpected trailing bytes`);
  }
}
