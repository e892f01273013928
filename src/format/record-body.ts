/**
 * The body of a change record: bounds-checked writing and reading of its fields, and of each
 * statement and parameter in it (docs/format.md, "Plain payload of a change").
 */
import type { Param, Params, Statement } from "../model/change.js";
import { CorruptError, InputError } from "../util/errors.js";

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

/** Writes statement `index` of a transaction; throws InputError for a value that cannot be stored. */
export function writeStatement(w: BodyWriter, st: Statement, index: number): void {
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
export class BodyWriter {
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
  /** Bytes whose length the reader knows already: no length prefix. */
  raw(b: Uint8Array): void {
    this.#room(b.length);
    this.#buf.set(b, this.#pos);
    this.#pos += b.length;
  }
  finish(): Buffer {
    return this.#buf.subarray(0, this.#pos);
  }
}

/** Writes a safe integer as an unsigned 64-bit little-endian value. */
export function writeU64(buf: Buffer, at: number, v: number): void {
  buf.writeUInt32LE(v % 0x1_0000_0000 >>> 0, at);
  buf.writeUInt32LE(Math.floor(v / 0x1_0000_0000), at + 4);
}

/** Reads an unsigned 64-bit little-endian value; NaN beyond 2^53. */
export function readU64(buf: Buffer, at: number): number {
  const lo = buf.readUInt32LE(at);
  const hi = buf.readUInt32LE(at + 4);
  if (hi > 0x1fffff) return Number.NaN; // beyond 2^53: not a value we write
  return hi * 0x1_0000_0000 + lo;
}

/** Reads the next statement of a transaction. */
export function readStatement(r: BodyReader): Statement {
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

/** Bounds-checked reads over a record's (opened) payload. */
export class BodyReader {
  #pos = 0;
  readonly #buf: Buffer;
  readonly #end: number;
  readonly #offset: number;
  readonly #version: number;
  readonly #location: string;

  /** Reads `payload[start..end)`: a record's body in place, without a subarray of its own. */
  constructor(payload: Buffer, offset: number, version: number, location: string, start = 0, end = payload.length) {
    this.#buf = payload;
    this.#pos = start;
    this.#end = end;
    this.#offset = offset;
    this.#version = version;
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
  /** `n` bytes whose length the writer did not store (see BodyWriter.raw), copied. */
  raw(n: number): Buffer {
    const at = this.#take(n);
    return Buffer.from(this.#buf.subarray(at, at + n));
  }
  end(): void {
    if (this.#pos !== this.#end) this.fail(`record body has ${this.#end - this.#pos} unexpected trailing bytes`);
  }
}
