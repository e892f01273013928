/**
 * Reads a SQLite WAL file: its header, and the committed transactions in its frames.
 *
 * The format (sqlite.org/fileformat2.html, "The Write-Ahead Log"): a 32-byte header (magic,
 * format 3007000, page size, checkpoint sequence, two salts, a checksum of the first 24
 * bytes), then frames of a 24-byte header (page number, the database size in pages for a
 * commit frame or 0, the two salts, a cumulative checksum) and one page. Header fields are
 * big-endian; the checksums are over 32-bit words in the order the magic's low bit says. A
 * frame is valid when its salts are the header's and its checksum continues the chain from
 * the header; the first invalid frame ends the WAL, as it does for SQLite's own recovery.
 * A transaction is committed once its commit frame is valid and SQLite's WAL index (the
 * `-shm` file's header, sqlite.org/walformat.html) counts it: a writer killed between writing
 * its commit frame and updating the index never committed, and the next writer overwrites it.
 */
import fs from "node:fs";
import type { WalPosition } from "../model/change.js";

/** Bytes of the WAL header. */
export const WAL_HEADER_SIZE = 32;
/** Bytes of a frame header. */
export const WAL_FRAME_HEADER_SIZE = 24;
const MAGIC = 0x377f0682;
const FORMAT = 3007000;
/** Frames read at a time. */
const CHUNK_FRAMES = 256;

/** A WAL header that passed its checks. */
export interface WalHeader {
  readonly pageSize: number;
  readonly checkpointSeq: number;
  readonly salt1: number;
  readonly salt2: number;
  readonly checksum1: number;
  readonly checksum2: number;
  /** Checksum words are big-endian (magic 0x377f0683). */
  readonly bigEndian: boolean;
}

/** One committed transaction: the last copy of each page it wrote, and where it ends. */
export interface WalTransaction {
  readonly pages: Map<number, Buffer>;
  readonly dbPages: number;
  /** Frames it spans (each a page write, including overwritten ones). */
  readonly frames: number;
  /** The position after its commit frame. */
  readonly end: WalPosition;
}

/** Where the first frame of `header`'s cycle continues from: no frame read yet. */
export function startOf(header: WalHeader): WalPosition {
  return { salt1: header.salt1, salt2: header.salt2, frame: 0, checksum1: header.checksum1, checksum2: header.checksum2 };
}

/** Whether `pos` belongs to the cycle `header` starts. */
export function sameCycle(header: WalHeader, pos: WalPosition): boolean {
  return header.salt1 === pos.salt1 && header.salt2 === pos.salt2;
}

/**
 * SQLite's WAL checksum over `buf[start..end)` (a multiple of 8 bytes), continuing from
 * `(s1, s2)`: for each pair of words x0, x1, s1 += x0 + s2 and s2 += x1 + s1, modulo 2^32.
 */
export function walChecksum(buf: Buffer, start: number, end: number, s1: number, s2: number, bigEndian: boolean): [number, number] {
  let a = s1;
  let b = s2;
  if (bigEndian) {
    for (let i = start; i < end; i += 8) {
      a = (a + buf.readUInt32BE(i) + b) >>> 0;
      b = (b + buf.readUInt32BE(i + 4) + a) >>> 0;
    }
  } else {
    for (let i = start; i < end; i += 8) {
      a = (a + buf.readUInt32LE(i) + b) >>> 0;
      b = (b + buf.readUInt32LE(i + 4) + a) >>> 0;
    }
  }
  return [a, b];
}

/** Parses a WAL header; null when the bytes are not a valid one (short, wrong magic or checksum). */
export function parseWalHeader(buf: Buffer): WalHeader | null {
  if (buf.length < WAL_HEADER_SIZE) return null;
  const magic = buf.readUInt32BE(0);
  if ((magic & 0xfffffffe) !== MAGIC) return null;
  if (buf.readUInt32BE(4) !== FORMAT) return null;
  const bigEndian = (magic & 1) === 1;
  const [c1, c2] = walChecksum(buf, 0, 24, 0, 0, bigEndian);
  if (c1 !== buf.readUInt32BE(24) || c2 !== buf.readUInt32BE(28)) return null;
  const pageSize = buf.readUInt32BE(8);
  if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) return null;
  return { pageSize, checkpointSeq: buf.readUInt32BE(12), salt1: buf.readUInt32BE(16), salt2: buf.readUInt32BE(20), checksum1: c1, checksum2: c2, bigEndian };
}

/** A valid frame as {@link WalFile.frames} yields it; `page` is only valid until the next one. */
export interface WalFrame {
  /** Frame number, from 1. */
  readonly frame: number;
  readonly pgno: number;
  /** The database size in pages for a commit frame, else 0. */
  readonly commit: number;
  readonly page: Buffer;
  readonly checksum1: number;
  readonly checksum2: number;
}

/** Bytes of one copy of the WAL-index header at the start of the -shm file. */
const INDEX_HEADER_SIZE = 48;

/**
 * A WAL file, read through one descriptor (reopened when the file is replaced), and the
 * header of its WAL index, read through another that stays open until {@link close}: closing
 * a descriptor of the -shm file would drop the POSIX locks this process's SQLite connections
 * hold on it.
 */
export class WalFile {
  readonly path: string;
  #fd: number | null = null;
  #ino = 0;
  #shm: number | null = null;

  /** `path` is the -wal file; the index is `path` with -shm for -wal. */
  constructor(path: string) {
    this.path = path;
  }

  /**
   * The last frame SQLite's WAL index counts as committed in `header`'s cycle, or null when
   * the index is of another cycle (a restart under way) or cannot be read consistently.
   */
  committedFrames(header: WalHeader): number | null {
    if (this.#shm === null) {
      try {
        this.#shm = fs.openSync(this.path.replace(/-wal$/, "-shm"), "r");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
        throw err;
      }
    }
    const b = Buffer.alloc(INDEX_HEADER_SIZE * 2);
    for (let attempt = 0; attempt < 100; attempt++) {
      if (fs.readSync(this.#shm, b, 0, b.length, 0) < b.length) return null;
      // Two copies, written one after the other: equal and checksummed, or caught mid-update.
      if (b.compare(b, 0, INDEX_HEADER_SIZE, INDEX_HEADER_SIZE, INDEX_HEADER_SIZE * 2) !== 0 || b[12] !== 1) continue;
      // The index is in the machine's byte order (little-endian here: x86, arm64).
      const [c1, c2] = walChecksum(b, 0, 40, 0, 0, false);
      if (c1 !== b.readUInt32LE(40) || c2 !== b.readUInt32LE(44)) continue;
      // The salts are copied from the WAL header as bytes.
      if (b.readUInt32BE(32) !== header.salt1 || b.readUInt32BE(36) !== header.salt2) return null;
      return b.readUInt32LE(16);
    }
    return null;
  }

  /** The descriptor of the file now at the path, or null when there is none. */
  #open(): number | null {
    let st: fs.Stats;
    try {
      st = fs.statSync(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        this.close();
        return null;
      }
      throw err;
    }
    if (this.#fd !== null && st.ino === this.#ino) return this.#fd;
    this.close();
    try {
      this.#fd = fs.openSync(this.path, "r");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
    this.#ino = fs.fstatSync(this.#fd).ino;
    return this.#fd;
  }

  /** Bytes in the file (0 when there is none). */
  size(): number {
    const fd = this.#open();
    return fd === null ? 0 : fs.fstatSync(fd).size;
  }

  /** The header, or null when the WAL is absent, empty (after a TRUNCATE checkpoint) or not valid. */
  header(): WalHeader | null {
    const fd = this.#open();
    if (fd === null) return null;
    const buf = Buffer.alloc(WAL_HEADER_SIZE);
    const n = fs.readSync(fd, buf, 0, WAL_HEADER_SIZE, 0);
    return parseWalHeader(buf.subarray(0, n));
  }

  /**
   * Yields the valid frames after `from` (which must be in `header`'s cycle), in order, until
   * the first frame that is missing, torn, of another cycle or fails the checksum chain.
   */
  *frames(header: WalHeader, from: WalPosition, lastFrame = Infinity): Generator<WalFrame> {
    const fd = this.#open();
    if (fd === null) return;
    const frameSize = WAL_FRAME_HEADER_SIZE + header.pageSize;
    const buf = Buffer.allocUnsafe(frameSize * CHUNK_FRAMES);
    let frame = from.frame;
    let s1 = from.checksum1;
    let s2 = from.checksum2;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, WAL_HEADER_SIZE + frame * frameSize);
      const whole = Math.floor(n / frameSize);
      for (let i = 0; i < whole; i++) {
        const at = i * frameSize;
        if (buf.readUInt32BE(at + 8) !== header.salt1 || buf.readUInt32BE(at + 12) !== header.salt2) return;
        [s1, s2] = walChecksum(buf, at, at + 8, s1, s2, header.bigEndian);
        [s1, s2] = walChecksum(buf, at + WAL_FRAME_HEADER_SIZE, at + frameSize, s1, s2, header.bigEndian);
        if (s1 !== buf.readUInt32BE(at + 16) || s2 !== buf.readUInt32BE(at + 20)) return;
        frame++;
        if (frame > lastFrame) return;
        const pgno = buf.readUInt32BE(at);
        if (pgno === 0) return;
        yield { frame, pgno, commit: buf.readUInt32BE(at + 4), page: buf.subarray(at + WAL_FRAME_HEADER_SIZE, at + frameSize), checksum1: s1, checksum2: s2 };
      }
      if (whole < CHUNK_FRAMES) return;
    }
  }

  /**
   * The committed transactions after `from`, in order, stopping once `maxBytes` of pages are
   * gathered (a transaction is never split) or the valid frames end, or at `lastFrame` (what
   * the WAL index counts; by default, read from it). Frames after the last commit frame (a
   * transaction still being written, or rolled back) are left for later.
   */
  transactions(header: WalHeader, from: WalPosition, lastFrame: number | null = this.committedFrames(header), maxBytes = 64 << 20): WalTransaction[] {
    const out: WalTransaction[] = [];
    if (lastFrame === null || lastFrame <= from.frame) return out;
    let pages = new Map<number, Buffer>();
    let frames = 0;
    let bytes = 0;
    for (const f of this.frames(header, from, lastFrame)) {
      pages.set(f.pgno, Buffer.from(f.page));
      frames++;
      if (f.commit === 0) continue;
      out.push({ pages, dbPages: f.commit, frames, end: { salt1: header.salt1, salt2: header.salt2, frame: f.frame, checksum1: f.checksum1, checksum2: f.checksum2 } });
      bytes += pages.size * header.pageSize;
      pages = new Map();
      frames = 0;
      if (bytes >= maxBytes) break;
    }
    return out;
  }

  /** Whether frame `pos.frame` of `header`'s cycle is still there with the checksum `pos` recorded. */
  holds(header: WalHeader, pos: WalPosition): boolean {
    if (!sameCycle(header, pos)) return false;
    if (pos.frame === 0) return pos.checksum1 === header.checksum1 && pos.checksum2 === header.checksum2;
    const fd = this.#open();
    if (fd === null) return false;
    const b = Buffer.alloc(WAL_FRAME_HEADER_SIZE);
    const n = fs.readSync(fd, b, 0, WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE + (pos.frame - 1) * (WAL_FRAME_HEADER_SIZE + header.pageSize));
    return n === WAL_FRAME_HEADER_SIZE && b.readUInt32BE(8) === pos.salt1 && b.readUInt32BE(12) === pos.salt2 && b.readUInt32BE(16) === pos.checksum1 && b.readUInt32BE(20) === pos.checksum2;
  }

  /** Closes both descriptors: only once this process's SQLite connections to the database are closed. */
  close(): void {
    if (this.#fd !== null) fs.closeSync(this.#fd);
    this.#fd = null;
    if (this.#shm !== null) fs.closeSync(this.#shm);
    this.#shm = null;
  }
}
