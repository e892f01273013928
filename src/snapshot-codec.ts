/**
 * The snapshot blob format: a SQLite file cut into checksummed frames, streamed both ways.
 *
 * docs/format.md describes it byte by byte. Frames let a reader verify each piece before it
 * passes it on, and pinpoint damage by offset; the end frame catches a blob cut short at a
 * frame boundary. Nothing here holds more than one frame in memory.
 */
import { crc32 } from "node:zlib";
import { CorruptError } from "./errors.js";

/** "TDMS": the first four bytes of every snapshot blob. */
export const SNAPSHOT_MAGIC = Buffer.from("TDMS", "latin1");
/** The snapshot format version this code writes and reads. */
export const SNAPSHOT_FORMAT = 1;
/** Bytes of the blob header. */
export const SNAPSHOT_HEADER_SIZE = 16;
/** How much of the SQLite file goes in one frame. */
export const FRAME_SIZE = 1 << 20;
/** The largest stored frame accepted when reading. */
const MAX_STORED_FRAME = 16 << 20;
const END_FRAME_SIZE = 20;

/** Size and CRC-32 of the SQLite bytes a blob holds. */
export interface SnapshotDigest {
  readonly size: number;
  readonly crc32: number;
}

/**
 * Encodes a stream of SQLite bytes as a snapshot blob. Iterate `frames()` once; after it ends,
 * `digest` holds the size and CRC-32 of what went in.
 */
export class SnapshotEncoder {
  #size = 0;
  #crc = 0;
  #done = false;

  /** Size and CRC-32 of the input; valid once `frames()` has finished. */
  get digest(): SnapshotDigest {
    if (!this.#done) throw new Error("snapshot digest read before the encoder finished");
    return { size: this.#size, crc32: this.#crc };
  }

  /** Yields the blob: header, frames, end frame. */
  async *frames(source: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
    const header = Buffer.alloc(SNAPSHOT_HEADER_SIZE);
    SNAPSHOT_MAGIC.copy(header, 0);
    header[4] = SNAPSHOT_FORMAT;
    header[5] = 0; // compression: none
    header.writeUInt32LE(0, 8); // key id: not encrypted
    header.writeUInt32LE(crc32(header.subarray(0, 12)), 12);
    yield header;

    let pending: Buffer[] = [];
    let pendingBytes = 0;
    for await (const piece of source) {
      const chunk = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      pending.push(chunk);
      pendingBytes += chunk.length;
      while (pendingBytes >= FRAME_SIZE) {
        const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        yield this.#frame(all.subarray(0, FRAME_SIZE));
        const rest = all.subarray(FRAME_SIZE);
        pending = rest.length > 0 ? [rest] : [];
        pendingBytes = rest.length;
      }
    }
    if (pendingBytes > 0) yield this.#frame(Buffer.concat(pending, pendingBytes));

    const end = Buffer.alloc(END_FRAME_SIZE);
    end.writeUInt32LE(0, 0);
    end.writeUInt32LE(this.#crc, 4);
    end.writeUInt32LE(this.#size % 0x1_0000_0000, 8);
    end.writeUInt32LE(Math.floor(this.#size / 0x1_0000_0000), 12);
    end.writeUInt32LE(crc32(end.subarray(0, 16)), 16);
    this.#done = true;
    yield end;
  }

  #frame(raw: Buffer): Buffer {
    this.#size += raw.length;
    this.#crc = crc32(raw, this.#crc);
    const head = Buffer.allocUnsafe(8);
    head.writeUInt32LE(raw.length, 0);
    head.writeUInt32LE(crc32(raw), 4);
    return Buffer.concat([head, raw]);
  }
}

/**
 * Decodes a snapshot blob back into SQLite bytes, verifying every frame, the end frame, and the
 * size and CRC-32 the change record expects. Damage raises CorruptError naming `location` and
 * the byte offset.
 */
export async function* decodeSnapshot(
  source: AsyncIterable<Uint8Array>,
  expect: SnapshotDigest,
  location: string,
  version?: number,
): AsyncGenerator<Buffer> {
  const input = new ExactReader(source);
  const fail = (offset: number, what: string): never => {
    throw new CorruptError(location, what, { offset, ...(version !== undefined && { version }) });
  };
  const header = await input.read(SNAPSHOT_HEADER_SIZE);
  if (header.length < SNAPSHOT_HEADER_SIZE) fail(0, "snapshot blob is shorter than its header");
  if (!header.subarray(0, 4).equals(SNAPSHOT_MAGIC)) fail(0, "not a snapshot blob (bad magic)");
  if (header.readUInt32LE(12) !== crc32(header.subarray(0, 12))) fail(0, "snapshot header checksum mismatch");
  if (header[4] !== SNAPSHOT_FORMAT) fail(4, `snapshot format ${header[4]} is not supported`);
  if (header[5] !== 0) fail(5, `snapshot compression ${header[5]} is not supported`);
  if (header.readUInt32LE(8) !== 0) fail(8, `snapshot is encrypted with key id ${header.readUInt32LE(8)}`);

  let size = 0;
  let crc = 0;
  for (;;) {
    const at = input.offset;
    const head = await input.read(8);
    if (head.length < 8) fail(at, "snapshot blob ends before its end frame (truncated)");
    const length = head.readUInt32LE(0);
    if (length === 0) {
      const rest = await input.read(END_FRAME_SIZE - 8);
      if (rest.length < END_FRAME_SIZE - 8) fail(at, "snapshot end frame is truncated");
      const end = Buffer.concat([head, rest]);
      if (end.readUInt32LE(16) !== crc32(end.subarray(0, 16))) fail(at, "snapshot end frame checksum mismatch");
      const endSize = end.readUInt32LE(8) + end.readUInt32LE(12) * 0x1_0000_0000;
      if (endSize !== size || end.readUInt32LE(4) !== crc) fail(at, "snapshot end frame disagrees with its frames");
      if (size !== expect.size || crc !== expect.crc32) {
        fail(at, `snapshot is ${size} bytes with CRC-32 ${hex(crc)}; its record expects ${expect.size} bytes with ${hex(expect.crc32)}`);
      }
      if ((await input.read(1)).length !== 0) fail(input.offset - 1, "unexpected bytes after the snapshot end frame");
      return;
    }
    if (length > MAX_STORED_FRAME) fail(at, `snapshot frame length ${length} is out of range`);
    const body = await input.read(length);
    if (body.length < length) fail(at, "snapshot frame is truncated");
    if (crc32(body) !== head.readUInt32LE(4)) fail(at, "snapshot frame checksum mismatch");
    size += body.length;
    crc = crc32(body, crc);
    yield body;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}

/** Reads exact byte counts from a chunked stream, keeping at most one read's worth buffered. */
class ExactReader {
  readonly #it: AsyncIterator<Uint8Array>;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #eof = false;
  /** Bytes consumed so far. */
  offset = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  /** Returns `n` bytes, or fewer only at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    while (this.#buffered < n && !this.#eof) {
      const next = await this.#it.next();
      if (next.done) {
        this.#eof = true;
        break;
      }
      const c = next.value;
      const buf = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      this.#chunks.push(buf);
      this.#buffered += buf.length;
    }
    const take = Math.min(n, this.#buffered);
    let out: Buffer;
    const first = this.#chunks[0];
    if (first && first.length >= take) {
      out = first.subarray(0, take);
      if (first.length === take) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(take);
    } else {
      const all = Buffer.concat(this.#chunks, this.#buffered);
      out = all.subarray(0, take);
      this.#chunks = take < all.length ? [all.subarray(take)] : [];
    }
    this.#buffered -= take;
    this.offset += take;
    return out;
  }
}
