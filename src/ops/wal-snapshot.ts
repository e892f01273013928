/**
 * A fresh base for a captured backup: the database as of the WAL's last commit, built from
 * the database file with the latest committed copy of each page in the WAL laid over it.
 *
 * Taken while the capture holds a read transaction, so that the result is exact however the
 * application writes meanwhile: a checkpoint may copy WAL frames into the database file while
 * it is read, but only frames at or below the read transaction's mark, and every page those
 * frames touch is taken from the WAL instead. The WAL itself can only restart (and overwrite
 * its frames) before anything new is appended to it; the header is read again at the end, and
 * if it changed the snapshot is refused ({@link WalChangedError}) and taken again.
 */
import fs from "node:fs";
import type { WalPosition } from "../model/change.js";
import { lockPage } from "../format/captured-body.js";
import { WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, startOf, type WalFile, type WalHeader } from "./wal-reader.js";

/** Pages read and yielded at a time. */
const BATCH_PAGES = 256;

/** The WAL restarted while the snapshot was read: take it again. */
export class WalChangedError extends Error {}

/** A snapshot ready to stream, and where the capture continues after it. */
export interface WalSnapshot {
  readonly pageSize: number;
  readonly dbPages: number;
  /** The position after the last commit included; null when there is no WAL. */
  readonly position: WalPosition | null;
  /** Streams the SQLite file's bytes, once; throws WalChangedError if the WAL restarted. */
  readonly source: AsyncIterable<Uint8Array>;
}

/** The position stored for a snapshot taken with no WAL: matches no WAL cycle. */
export const NO_WAL: WalPosition = Object.freeze({ salt1: 0, salt2: 0, frame: 0, checksum1: 0, checksum2: 0 });

/**
 * Plans a snapshot of the database open as `dbFd` and its WAL; the caller must hold a read
 * transaction on it. The descriptor stays the caller's: closing any descriptor of a database
 * file drops the POSIX locks every SQLite connection of the process holds on it.
 */
export function walSnapshot(dbFd: number, wal: WalFile): WalSnapshot {
  const header = wal.header();
  const fileBytes = fs.fstatSync(dbFd).size;
  let pageSize = header?.pageSize ?? pageSizeOf(dbFd);
  let dbPages = Math.floor(fileBytes / pageSize);
  let position: WalPosition | null = null;
  const latest = new Map<number, number>();
  if (header) {
    pageSize = header.pageSize;
    position = startOf(header);
    const pending = new Map<number, number>();
    for (const f of wal.frames(header, position, wal.committedFrames(header) ?? 0)) {
      pending.set(f.pgno, f.frame);
      if (f.commit === 0) continue;
      for (const [pgno, frame] of pending) latest.set(pgno, frame);
      pending.clear();
      dbPages = f.commit;
      position = { salt1: header.salt1, salt2: header.salt2, frame: f.frame, checksum1: f.checksum1, checksum2: f.checksum2 };
    }
  }
  return { pageSize, dbPages, position, source: pages(dbFd, wal, header, pageSize, dbPages, latest) };
}

async function* pages(db: number, wal: WalFile, header: WalHeader | null, pageSize: number, dbPages: number, latest: Map<number, number>): AsyncGenerator<Uint8Array> {
  const walFd = header ? fs.openSync(wal.path, "r") : null;
  const lock = lockPage(pageSize);
  try {
    for (let first = 1; first <= dbPages; first += BATCH_PAGES) {
      const n = Math.min(BATCH_PAGES, dbPages - first + 1);
      const buf = Buffer.allocUnsafe(n * pageSize);
      // The file's pages in one read (what it lacks reads as zeros), then the WAL's copies over them.
      const got = readFully(db, buf, (first - 1) * pageSize);
      if (got < buf.length) buf.fill(0, got);
      for (let i = 0; i < n; i++) {
        const pgno = first + i;
        const into = buf.subarray(i * pageSize, (i + 1) * pageSize);
        if (pgno === lock) into.fill(0); // never written by SQLite: zeros, as in the file
        const frame = latest.get(pgno);
        if (frame !== undefined) fs.readSync(walFd!, into, 0, pageSize, WAL_HEADER_SIZE + (frame - 1) * (WAL_FRAME_HEADER_SIZE + pageSize) + WAL_FRAME_HEADER_SIZE);
      }
      yield buf;
    }
    // Without a WAL at the start, the file could not change (nothing in a new WAL can be
    // checkpointed while the read transaction holds it), and the capture reads a new WAL from
    // its first frame.
    const now = wal.header();
    if (header && (!now || now.salt1 !== header.salt1 || now.salt2 !== header.salt2)) {
      throw new WalChangedError("the WAL restarted while the snapshot was read");
    }
  } finally {
    if (walFd !== null) fs.closeSync(walFd);
  }
}

/** Reads `buf.length` bytes at `position`, or up to the end of the file; returns how many. */
function readFully(fd: number, buf: Buffer, position: number): number {
  let got = 0;
  while (got < buf.length) {
    const n = fs.readSync(fd, buf, got, buf.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/** The page size in a database file's header (bytes 16..17; 1 means 65536), 4096 for an empty file. */
function pageSizeOf(fd: number): number {
  const b = Buffer.alloc(18);
  if (fs.readSync(fd, b, 0, 18, 0) < 18) return 4096;
  const v = b.readUInt16BE(16);
  return v === 1 ? 65536 : v;
}
