/**
 * The binary record format for one change, as every backend stores it.
 *
 * docs/format.md describes it byte by byte. In short: a 28-byte header with its own CRC-32,
 * the body, and a CRC-32 over everything before it. The header CRC lets a reader trust the
 * body length before it reads the body, so a corrupt length never makes it read garbage.
 */
import { crc32 } from "./crc32.js";
import type { CapturedPages, Statement } from "../model/change.js";
import { readCaptured, writeCaptured } from "./captured-body.js";
import { randomBytes } from "node:crypto";
import { IV_BYTES, PLAIN, compress, decompress, decrypt, encrypt, type Codec } from "./sealing.js";
import { CorruptError, InputError } from "../util/errors.js";
import { Keyring } from "./keyring.js";
import { BodyReader, BodyWriter, readStatement, readU64, writeStatement, writeU64 } from "./record-body.js";

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
/** The change continues the version of the change record before it (docs/format.md, "Continuations"). */
export const FLAG_CONTINUATION = 0x80;
/** The change carries pages captured from a WAL (docs/format.md, "Captured pages"). */
export const FLAG_CAPTURED = 8;
/**
 * The change replaces the live change of the same version right before it: a rewind and the
 * redone change in one record, so that a redo is one durable step (docs/format.md, "Redo").
 */
export const FLAG_REPLACES_LAST = 0x10;

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
  /** Set for a continuation of the version of the record before it. */
  readonly continuation?: true;
  /** Set for a redo: the change takes the place of the live change of its version before it. */
  readonly replacesLast?: true;
  readonly captured?: CapturedPages;
}

/** What encodeChangeRecord needs. */
export interface ChangeRecordInput {
  readonly version: number;
  readonly timestamp: number;
  readonly snapshot?: SnapshotRef;
  readonly transaction?: readonly Statement[];
  /** Marks the record as a continuation of the version before it; it takes no snapshot. */
  readonly continuation?: boolean;
  /** Marks the record as a redo of the live change of the same version before it; not with a continuation. */
  readonly replacesLast?: boolean;
  readonly captured?: CapturedPages;
}

/** Outcome of looking for a whole, intact record at an offset. */
export type RecordProbe =
  /** An intact record: the probe is its header. */
  | RecordHeader
  /** Fewer bytes than the record needs: a torn append, or the end of the data. */
  | { readonly kind: "short"; readonly needed: number }
  /** Bytes that are not a valid record. */
  | { readonly kind: "bad"; readonly what: string; readonly version?: number; readonly length?: number };

/**
 * Encodes a change record, sealed with `codec` (compression, then encryption with the active
 * key, if any). Throws InputError for a value that cannot be stored.
 */
export function encodeChangeRecord(change: ChangeRecordInput, codec: Codec = PLAIN): Buffer {
  checkVersion(change.version);
  const w = new BodyWriter();
  w.u64(change.timestamp);
  let flags = 0;
  if (change.snapshot) {
    flags |= FLAG_SNAPSHOT;
    w.u64(change.snapshot.size);
    w.u32(change.snapshot.crc32);
  }
  if (change.transaction) {
    flags |= FLAG_TRANSACTION;
    w.u32(change.transaction.length);
    change.transaction.forEach((st, i) => writeStatement(w, st, i));
  }
  if (change.continuation) {
    if (change.snapshot) throw new InputError(`change ${change.version}: a continuation takes no snapshot`);
    flags |= FLAG_CONTINUATION;
  }
  if (change.replacesLast) {
    if (change.continuation) throw new InputError(`change ${change.version}: a continuation cannot replace a change`);
    flags |= FLAG_REPLACES_LAST;
  }
  if (change.captured) {
    flags |= FLAG_CAPTURED;
    writeCaptured(w, change.captured);
  }
  return frame(RecordType.Change, flags, change.version, change.snapshot?.ref, w.finish(), codec);
}

/** Encodes a rewind record: it cancels the change of the same version right before it. */
export function encodeRewindRecord(version: number, timestamp: number, codec: Codec = PLAIN): Buffer {
  checkVersion(version);
  const w = new BodyWriter();
  w.u64(timestamp);
  return frame(RecordType.Rewind, 0, version, undefined, w.finish(), codec);
}

function checkVersion(version: number): void {
  if (!Number.isSafeInteger(version) || version < 1) {
    throw new InputError(`version must be an integer >= 1, got ${version}`);
  }
}

/**
 * Lays out a record: header, the snapshot reference in the clear (so that a backend can find
 * its blobs without a key), then the sealed payload.
 */
function frame(type: RecordType, flags: number, version: number, ref: string | undefined, payload: Buffer, codec: Codec): Buffer {
  const head = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
  RECORD_MAGIC.copy(head, 0);
  head[4] = RECORD_FORMAT;
  head[5] = type;
  head[6] = flags;
  writeU64(head, 8, version);
  const refBytes = ref === undefined ? EMPTY : Buffer.from(ref, "utf8");
  if (refBytes.length > 0xffff) throw new InputError(`snapshot reference "${ref!.slice(0, 40)}…" is too long`);
  const { algo, bytes } = compress(payload, codec);
  head[7] = algo;
  const active = codec.keyring.active;
  head.writeUInt32LE(active?.id ?? 0, 16);
  let sealed = bytes;
  if (active) {
    const iv = randomBytes(IV_BYTES);
    sealed = Buffer.concat([iv, encrypt(bytes, active.key, iv, recordAad(head, refBytes))]);
  }
  const bodyLength = (flags & FLAG_SNAPSHOT ? 2 + refBytes.length : 0) + sealed.length;
  if (bodyLength > MAX_BODY_SIZE) {
    throw new InputError(`change ${version} is ${bodyLength} bytes encoded; the limit is ${MAX_BODY_SIZE}`, {
      hint: "split the transaction, or send the data as a snapshot",
    });
  }
  head.writeUInt32LE(bodyLength, 20);
  head.writeUInt32LE(crc32(head, 0, 24), 24);
  const out = Buffer.allocUnsafe(RECORD_OVERHEAD + bodyLength);
  head.copy(out, 0);
  let at = RECORD_HEADER_SIZE;
  if (flags & FLAG_SNAPSHOT) {
    out.writeUInt16LE(refBytes.length, at);
    refBytes.copy(out, at + 2);
    at += 2 + refBytes.length;
  }
  sealed.copy(out, at);
  const end = RECORD_HEADER_SIZE + bodyLength;
  out.writeUInt32LE(crc32(out, 0, end), end);
  return out;
}

/** What GCM authenticates besides the payload: the header up to the key id, and the reference. */
function recordAad(buf: Buffer, ref: Buffer): Buffer {
  return Buffer.concat([buf.subarray(0, 20), ref]);
}

const EMPTY = Buffer.alloc(0);

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
  return { kind: "bad", what: "record checksum mismatch", version: header.version, length: header.length };
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

/** The snapshot reference of an intact record, read without a key (it is stored in the clear). */
export function recordSnapshotRef(buf: Buffer, offset: number, header: RecordHeader, location: string): string | undefined {
  if (header.type !== RecordType.Change || !(header.flags & FLAG_SNAPSHOT)) return undefined;
  const at = offset + RECORD_HEADER_SIZE;
  const n = buf.readUInt16LE(at);
  if (2 + n > header.bodyLength) throw new CorruptError(location, "snapshot reference runs past the record body", { offset, version: header.version });
  return buf.toString("utf8", at + 2, at + 2 + n);
}

/**
 * Decodes the intact record at `offset` (as found by {@link probeRecord}), opening its payload
 * with `keyring`. A body that does not parse raises CorruptError naming `location`, the offset
 * and the version; a missing or wrong key raises E_KEY naming the key id.
 */
export function decodeRecord(buf: Buffer, offset: number, header: RecordHeader, location: string, keyring: Keyring = EMPTY_KEYRING, shownOffset = offset): DecodedRecord {
  const ref = recordSnapshotRef(buf, offset, header, location);
  const refBytes = ref === undefined ? 0 : 2 + Buffer.byteLength(ref);
  const start = offset + RECORD_HEADER_SIZE + refBytes;
  const end = offset + RECORD_HEADER_SIZE + header.bodyLength;
  // A plain body is read in place (one object less per record, which counts in a long replay).
  if (header.keyId === 0 && header.compression === 0) return decodeBody(new BodyReader(buf, shownOffset, header.version, location, start, end), header, ref);
  const fail = (what: string): never => {
    throw new CorruptError(location, what, { offset: shownOffset, version: header.version });
  };
  let payload = buf.subarray(start, end);
  if (header.keyId !== 0) {
    const what = `${location}, offset ${shownOffset}, version ${header.version}`;
    const key = keyring.get(header.keyId, `record at ${what}`);
    if (payload.length < IV_BYTES) fail("encrypted payload is shorter than its nonce");
    const aad = recordAad(buf.subarray(offset, offset + RECORD_HEADER_SIZE), buf.subarray(offset + RECORD_HEADER_SIZE + 2, offset + RECORD_HEADER_SIZE + refBytes));
    payload = decrypt(payload.subarray(IV_BYTES), key, payload.subarray(0, IV_BYTES), aad, header.keyId, keyring, `record at ${what}`);
  }
  if (header.compression !== 0) payload = decompress(payload, header.compression, fail);
  return decodeBody(new BodyReader(payload, shownOffset, header.version, location), header, ref);
}

/** Decodes an opened change or rewind body. */
function decodeBody(r: BodyReader, header: RecordHeader, ref: string | undefined): DecodedRecord {
  const timestamp = r.u64();
  const record: { -readonly [K in keyof DecodedRecord]: DecodedRecord[K] } = { type: header.type, version: header.version, timestamp };
  if (header.type === RecordType.Change) {
    if (header.flags & FLAG_CONTINUATION) record.continuation = true;
    if (header.flags & FLAG_REPLACES_LAST) record.replacesLast = true;
    if (ref !== undefined) record.snapshot = { size: r.u64(), crc32: r.u32(), ref };
    if (header.flags & FLAG_TRANSACTION) {
      const count = r.u32();
      const transaction: Statement[] = new Array(count);
      for (let i = 0; i < count; i++) transaction[i] = readStatement(r);
      record.transaction = transaction;
    }
    if (header.flags & FLAG_CAPTURED) record.captured = readCaptured(r);
  }
  r.end();
  return record;
}

const EMPTY_KEYRING = Keyring.empty();
