/**
 * The snapshot blob format: a SQLite file cut into frames, each sealed (compressed, encrypted)
 * and checksummed on its own, streamed both ways.
 *
 * docs/format.md describes it byte by byte. Frames let a reader verify each piece before it
 * passes it on, and pinpoint damage by offset; the end frame catches a blob cut short at a
 * frame boundary. Nothing here holds more than one frame in memory.
 */
import { randomBytes } from "node:crypto";
import { crc32, crc32Combine } from "./crc32.js";
import { Compression, PLAIN, TAG_BYTES, compressWith, decompress, decrypt, encrypt, type Codec } from "./sealing.js";
import { CorruptError } from "../util/errors.js";
import { Keyring } from "./keyring.js";

/** "TDMS": the first four bytes of every snapshot blob. */
export const SNAPSHOT_MAGIC = Buffer.from("TDMS", "latin1");
/** The snapshot format version this code writes and reads. */
export const SNAPSHOT_FORMAT = 1;
/** Bytes of the blob header. */
export const SNAPSHOT_HEADER_SIZE = 24;
/** How much of the SQLite file goes in one frame. */
export const FRAME_SIZE = 1 << 20;
/** The largest stored frame accepted when reading. */
const MAX_STORED_FRAME = 16 << 20;
/** The end frame's payload in the clear: SQLite file size and CRC-32. */
const TRAILER_SIZE = 12;

/** Size and CRC-32 of the SQLite bytes a blob holds. */
export interface SnapshotDigest {
  readonly size: number;
  readonly crc32: number;
}

/**
 * Encodes a stream of SQLite bytes as a snapshot blob sealed with `codec`. Iterate `frames()`
 * once; after it ends, `digest` holds the size and CRC-32 of what went in.
 */
export class SnapshotEncoder {
  readonly #codec: Codec;
  #size = 0;
  #crc = 0;
  #done = false;
  #header = Buffer.alloc(0);
  #index = 0;

  constructor(codec: Codec = PLAIN) {
    this.#codec = codec;
  }

  /** Size and CRC-32 of the input; valid once `frames()` has finished. */
  get digest(): SnapshotDigest {
    if (!this.#done) throw new Error("snapshot digest read before the encoder finished");
    return { size: this.#size, crc32: this.#crc };
  }

  /** Yields the blob: header, frames, end frame. */
  async *frames(source: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
    const active = this.#codec.keyring.active;
    const header = Buffer.alloc(SNAPSHOT_HEADER_SIZE);
    SNAPSHOT_MAGIC.copy(header, 0);
    header[4] = SNAPSHOT_FORMAT;
    header[5] = Compression[this.#codec.compression];
    header.writeUInt32LE(active?.id ?? 0, 8);
    if (active) randomBytes(8).copy(header, 12); // the nonce prefix; frame numbers complete it
    header.writeUInt32LE(crc32(header, 0, 20), 20);
    this.#header = header;
    yield header;

    let pending: Buffer[] = [];
    let pendingBytes = 0;
    for await (const piece of source) {
      const chunk = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      pending.push(chunk);
      pendingBytes += chunk.length;
      while (pendingBytes >= FRAME_SIZE) {
        const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        yield* this.#frame(all.subarray(0, FRAME_SIZE));
        const rest = all.subarray(FRAME_SIZE);
        pending = rest.length > 0 ? [rest] : [];
        pendingBytes = rest.length;
      }
    }
    if (pendingBytes > 0) yield* this.#frame(Buffer.concat(pending, pendingBytes));

    const trailer = Buffer.alloc(TRAILER_SIZE);
    trailer.writeUInt32LE(this.#size % 0x1_0000_0000, 0);
    trailer.writeUInt32LE(Math.floor(this.#size / 0x1_0000_0000), 4);
    trailer.writeUInt32LE(this.#crc, 8);
    const sealed = active ? encrypt(trailer, active.key, frameIv(header, this.#index), frameAad(header, this.#index, true)) : trailer;
    const end = Buffer.alloc(8 + sealed.length + 4);
    end.writeUInt32LE(0, 0);
    end.writeUInt32LE(sealed.length, 4);
    sealed.copy(end, 8);
    end.writeUInt32LE(crc32(end, 0, 8 + sealed.length), 8 + sealed.length);
    this.#done = true;
    yield end;
  }

  /** Yields a frame's head and its stored bytes (apart: the body is not copied). */
  *#frame(raw: Buffer): Generator<Buffer> {
    const header = this.#header;
    const plain = header[5] === Compression.none && !this.#codec.keyring.active;
    this.#size += raw.length;
    if (plain) {
      // A plain frame stores the SQLite bytes as they are: its checksum extends the running one.
      const frameCrc = crc32(raw);
      this.#crc = crc32Combine(this.#crc, frameCrc, raw.length);
      this.#index++;
      yield frameHead(raw.length, frameCrc);
      yield raw;
      return;
    }
    this.#crc = crc32(raw, 0, raw.length, this.#crc);
    // Every frame is compressed when the blob's header says so: the header, not each frame,
    // records the algorithm, so a frame that does not shrink grows by a few bytes instead.
    let stored = header[5] === Compression.none ? raw : compressWith(raw, this.#codec);
    const active = this.#codec.keyring.active;
    if (active) stored = encrypt(stored, active.key, frameIv(header, this.#index), frameAad(header, this.#index, false));
    this.#index++;
    yield frameHead(stored.length, crc32(stored));
    yield stored;
  }
}

function frameHead(length: number, crc: number): Buffer {
  const head = Buffer.allocUnsafe(8);
  head.writeUInt32LE(length, 0);
  head.writeUInt32LE(crc, 4);
  return head;
}

function frameIv(header: Buffer, index: number): Buffer {
  const iv = Buffer.alloc(12);
  header.copy(iv, 0, 12, 20);
  iv.writeUInt32BE(index, 8);
  return iv;
}

function frameAad(header: Buffer, index: number, final: boolean): Buffer {
  const aad = Buffer.alloc(25);
  header.copy(aad, 0, 0, 20);
  aad.writeUInt32LE(index, 20);
  aad[24] = final ? 1 : 0;
  return aad;
}

/** A blob open for positioned reads: what a storage's `readBlob` returns. */
export interface PositionedReader {
  /** Reads up to `length` bytes at byte `position` into `into[0..length)`; fewer only at the blob's end. */
  read(into: Buffer, length: number, position: number): Promise<number>;
  /** Releases the blob. */
  close(): Promise<void>;
}

/** Where a blob is read from: a stream of chunks, or a blob open for positioned reads. */
export type SnapshotSource = AsyncIterable<Uint8Array> | PositionedReader;

/** Options for {@link decodeSnapshot}. */
export interface DecodeOptions {
  /**
   * Yield views into one buffer reused from frame to frame: each yielded buffer is valid only
   * until the next is asked for, so the consumer must be done with it by then (write it
   * synchronously, say). Saves allocating and copying a buffer per frame.
   */
  readonly reuse?: boolean;
}

/** One stored frame of a blob, its checksum verified; `end` for the end frame. */
interface StoredFrame {
  readonly index: number;
  /** Byte offset of the frame in the blob. */
  readonly at: number;
  /** The sealed payload. */
  readonly body: Buffer;
  /** Its CRC-32, as stored and verified. */
  readonly crc: number;
  readonly end: boolean;
}

/**
 * Walks a blob's frames, checking the header, each frame's checksum and the end frame's; needs
 * no key. Damage raises CorruptError naming `location` and the byte offset. Each read's
 * numbers are taken before the next read, which may reuse its buffer.
 */
async function* storedFrames(input: FrameInput, header: Buffer, fail: (offset: number, what: string) => never): AsyncGenerator<StoredFrame> {
  const encrypted = header.readUInt32LE(8) !== 0;
  for (let index = 0; ; index++) {
    const at = input.offset;
    const head = await input.read(8);
    if (head.length < 8) fail(at, "snapshot blob ends before its end frame (truncated)");
    const length = head.readUInt32LE(0);
    const stated = head.readUInt32LE(4);
    if (length === 0) {
      const sealedLength = stated;
      if (sealedLength !== TRAILER_SIZE + (encrypted ? TAG_BYTES : 0)) fail(at, `snapshot end frame has length ${sealedLength}`);
      const headCrc = crc32(head, 0, 8);
      const rest = await input.read(sealedLength + 4);
      if (rest.length < sealedLength + 4) fail(at, "snapshot end frame is truncated");
      if (rest.readUInt32LE(sealedLength) !== crc32(rest, 0, sealedLength, headCrc)) fail(at, "snapshot end frame checksum mismatch");
      const body = Buffer.from(rest.subarray(0, sealedLength));
      if ((await input.read(1)).length !== 0) fail(input.offset - 1, "unexpected bytes after the snapshot end frame");
      yield { index, at, body, crc: headCrc, end: true };
      return;
    }
    if (length > MAX_STORED_FRAME) fail(at, `snapshot frame length ${length} is out of range`);
    const body = await input.read(length);
    if (body.length < length) fail(at, "snapshot frame is truncated");
    const crc = crc32(body);
    if (crc !== stated) fail(at, "snapshot frame checksum mismatch");
    yield { index, at, body, crc, end: false };
  }
}

/** Reads and checks a blob's header. */
async function readHeader(input: FrameInput, fail: (offset: number, what: string) => never): Promise<Buffer> {
  const header = Buffer.from(await input.read(SNAPSHOT_HEADER_SIZE));
  if (header.length < SNAPSHOT_HEADER_SIZE) fail(0, "snapshot blob is shorter than its header");
  if (!header.subarray(0, 4).equals(SNAPSHOT_MAGIC)) fail(0, "not a snapshot blob (bad magic)");
  if (header.readUInt32LE(20) !== crc32(header, 0, 20)) fail(0, "snapshot header checksum mismatch");
  if (header[4] !== SNAPSHOT_FORMAT) fail(4, `snapshot format ${header[4]} is not supported`);
  return header;
}

function failer(location: string, version: number | undefined): (offset: number, what: string) => never {
  return (offset, what) => {
    throw new CorruptError(location, what, { offset, ...(version !== undefined && { version }) });
  };
}

/**
 * Checks a blob's framing and checksums without opening it (no key needed): whether it is
 * whole and as written. Damage raises CorruptError naming `location` and the byte offset.
 */
export async function checkSnapshotFrames(source: SnapshotSource, location: string, version?: number): Promise<void> {
  const input = frameInput(source, true);
  try {
    const fail = failer(location, version);
    const header = await readHeader(input, fail);
    for await (const _frame of storedFrames(input, header, fail));
  } finally {
    await input.close();
  }
}

/**
 * Decodes a snapshot blob back into SQLite bytes, verifying every frame, the end frame, and the
 * size and CRC-32 the change record expects. Damage raises CorruptError naming `location` and
 * the byte offset; a missing or wrong key raises E_KEY naming the key id.
 */
export async function* decodeSnapshot(
  source: SnapshotSource,
  expect: SnapshotDigest,
  location: string,
  version?: number,
  keyring: Keyring = Keyring.empty(),
  options: DecodeOptions = {},
): AsyncGenerator<Buffer> {
  const input = frameInput(source, options.reuse ?? false);
  try {
    const fail = failer(location, version);
    const header = await readHeader(input, fail);
    const algo = header[5]!;
    const keyId = header.readUInt32LE(8);
    const key = keyId === 0 ? null : keyring.get(keyId, `snapshot ${location}`);
    const plain = algo === Compression.none && !key;

    let size = 0;
    let crc = 0;
    for await (const { index, at, body: sealed, crc: frameCrc, end } of storedFrames(input, header, fail)) {
      if (end) {
        let trailer = sealed;
        if (key) trailer = decrypt(trailer, key, frameIv(header, index), frameAad(header, index, true), keyId, keyring, `snapshot ${location}`);
        const endSize = trailer.readUInt32LE(0) + trailer.readUInt32LE(4) * 0x1_0000_0000;
        if (endSize !== size || trailer.readUInt32LE(8) !== crc) fail(at, "snapshot end frame disagrees with its frames");
        if (size !== expect.size || crc !== expect.crc32) {
          fail(at, `snapshot is ${size} bytes with CRC-32 ${hex(crc)}; its record expects ${expect.size} bytes with ${hex(expect.crc32)}`);
        }
        return;
      }
      let body = sealed;
      if (plain) {
        // The stored bytes are the SQLite bytes: the frame's checksum extends the running one.
        crc = crc32Combine(crc, frameCrc, body.length);
      } else {
        if (key) body = decrypt(body, key, frameIv(header, index), frameAad(header, index, false), keyId, keyring, `snapshot ${location}, frame at offset ${at}`);
        if (algo !== Compression.none) body = decompress(body, algo, (what) => fail(at, what));
        crc = crc32(body, 0, body.length, crc);
      }
      size += body.length;
      yield body;
    }
  } finally {
    await input.close();
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}

/** Exact byte counts from a blob, at a running offset. */
interface FrameInput {
  /** Bytes consumed so far. */
  readonly offset: number;
  /**
   * Returns `n` bytes, or fewer only at the end. With reuse, the bytes may sit in a buffer the
   * next read overwrites.
   */
  read(n: number): Promise<Buffer>;
  close(): Promise<void>;
}

function frameInput(source: SnapshotSource, reuse: boolean): FrameInput {
  return Symbol.asyncIterator in source ? new ExactReader(source, reuse) : new PositionedInput(source, reuse);
}

/** A buffer of at least `n` bytes: `buf` when it is large enough, else a new one. */
function atLeast(buf: Buffer, n: number): Buffer {
  return buf.length >= n ? buf : Buffer.allocUnsafe(Math.max(n, Math.min(2 * buf.length, MAX_STORED_FRAME + 8)));
}

/** Reads a blob with positioned reads: each frame in one read, into one buffer with reuse. */
class PositionedInput implements FrameInput {
  readonly #reader: PositionedReader;
  readonly #reuse: boolean;
  #scratch: Buffer = Buffer.alloc(0);
  offset = 0;

  constructor(reader: PositionedReader, reuse: boolean) {
    this.#reader = reader;
    this.#reuse = reuse;
  }

  async read(n: number): Promise<Buffer> {
    let buf: Buffer;
    if (this.#reuse) buf = this.#scratch = atLeast(this.#scratch, n);
    else buf = Buffer.allocUnsafe(n);
    const got = await this.#reader.read(buf, n, this.offset);
    this.offset += got;
    return buf.subarray(0, got);
  }

  close(): Promise<void> {
    return this.#reader.close();
  }
}

/**
 * Reads exact byte counts from a chunked stream, keeping at most one read's worth buffered. A
 * read that straddles chunks is copied into one buffer: a reused one with reuse.
 */
class ExactReader implements FrameInput {
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #reuse: boolean;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #eof = false;
  #scratch: Buffer = Buffer.alloc(0);
  offset = 0;

  constructor(source: AsyncIterable<Uint8Array>, reuse: boolean) {
    this.#it = source[Symbol.asyncIterator]();
    this.#reuse = reuse;
  }

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
      out = this.#reuse ? (this.#scratch = atLeast(this.#scratch, take)).subarray(0, take) : Buffer.allocUnsafe(take);
      let filled = 0;
      while (filled < take) {
        const c = this.#chunks[0]!;
        const part = Math.min(c.length, take - filled);
        c.copy(out, filled, 0, part);
        filled += part;
        if (part === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(part);
      }
    }
    this.#buffered -= take;
    this.offset += take;
    return out;
  }

  async close(): Promise<void> {
    this.#eof = true;
    await this.#it.return?.();
  }
}
