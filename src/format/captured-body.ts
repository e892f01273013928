/**
 * The captured part of a change record's payload: the pages one or more committed WAL
 * transactions wrote (docs/format.md, "Captured pages"). Record flag bit 2 says it is present.
 */
import type { CapturedPage, CapturedPages } from "../model/change.js";
import { InputError } from "../util/errors.js";
import type { BodyReader, BodyWriter } from "./record-body.js";

/** The page sizes SQLite allows. */
function validPageSize(n: number): boolean {
  return Number.isInteger(n) && n >= 512 && n <= 65536 && (n & (n - 1)) === 0;
}

/** SQLite's lock page: the page holding byte 2^30 of the file, which SQLite never writes. */
export function lockPage(pageSize: number): number {
  return Math.floor(0x4000_0000 / pageSize) + 1;
}

/** Writes the captured pages; throws InputError for pages that cannot belong to a SQLite file. */
export function writeCaptured(w: BodyWriter, c: CapturedPages): void {
  if (!validPageSize(c.pageSize)) throw new InputError(`captured change: page size ${c.pageSize} is not a SQLite page size`);
  const lock = lockPage(c.pageSize);
  w.u32(c.pageSize);
  w.u32(c.dbPages);
  w.u32(c.transactions);
  for (const v of [c.wal.salt1, c.wal.salt2, c.wal.frame, c.wal.checksum1, c.wal.checksum2]) w.u32(v);
  w.u32(c.pages.length);
  for (const p of c.pages) {
    if (p.data.length !== c.pageSize) throw new InputError(`captured change: page ${p.pgno} has ${p.data.length} bytes, not ${c.pageSize}`);
    if (p.pgno < 1 || p.pgno > c.dbPages || p.pgno === lock) throw new InputError(`captured change: page number ${p.pgno} is outside the database (1..${c.dbPages}) or is the lock page`);
    w.u32(p.pgno);
    w.raw(p.data);
  }
}

/** Reads the captured pages; damage raises E_CORRUPT through the reader. */
export function readCaptured(r: BodyReader): CapturedPages {
  const pageSize = r.u32();
  if (!validPageSize(pageSize)) r.fail(`captured page size ${pageSize} is not a SQLite page size`);
  const dbPages = r.u32();
  const transactions = r.u32();
  const wal = { salt1: r.u32(), salt2: r.u32(), frame: r.u32(), checksum1: r.u32(), checksum2: r.u32() };
  const count = r.u32();
  const lock = lockPage(pageSize);
  const pages: CapturedPage[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const pgno = r.u32();
    if (pgno < 1 || pgno > dbPages || pgno === lock) r.fail(`captured page number ${pgno} is outside the database (1..${dbPages}) or is the lock page`);
    pages[i] = { pgno, data: r.raw(pageSize) };
  }
  return { pageSize, dbPages, transactions, wal, pages };
}
