/**
 * Checks that a snapshot is a sound SQLite file before it is acknowledged: its header against
 * its size, then `PRAGMA quick_check`, on a private temp file a stream is spooled to.
 */
import fs from "node:fs";
import path from "node:path";
import fsp from "node:fs/promises";
import Database from "better-sqlite3";
import { InputError, asBackendError } from "../util/errors.js";
import { isProcessAlive } from "../util/pid.js";

const MAGIC = Buffer.from("SQLite format 3\0", "latin1");
/** SQLite's database header: https://www.sqlite.org/fileformat.html#the_database_header */
const HEADER_BYTES = 100;

/** The most of a snapshot quick_check reads through a memory map (SQLite caps it at its build's maximum). */
const MMAP_BYTES = 2 ** 40;

/** Errors writing the spooled copy that are the local disk's, not the snapshot's. */
const SPOOL_ERRNOS = new Set(["ENOSPC", "EDQUOT", "EIO", "EROFS"]);

/** Names of the temp files openSpool (and ingest's `.state` copies) make: the pid that made them. */
const SPOOL_NAME_RE = /^snapshot-([0-9]+)-[0-9]+-[0-9a-z]+\.db(?:\.state)?$/;
/** Directories swept of stale temp files by this process. */
const swept = new Set<string>();

/**
 * Removes the temp files in `dir` that a process which is no longer running left behind (a
 * crash mid-snapshot): those named by openSpool whose pid is gone. Files of a live process,
 * and files of other names, are left alone. Returns the paths removed; a missing `dir` is none.
 */
export function sweepStaleSpools(dir: string): string[] {
  swept.add(dir);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const removed: string[] = [];
  for (const name of names) {
    const pid = SPOOL_NAME_RE.exec(name)?.[1];
    if (pid === undefined || isProcessAlive(Number(pid))) continue;
    const file = path.join(dir, name);
    if (!fs.lstatSync(file, { throwIfNoEntry: false })?.isFile()) continue;
    fs.rmSync(file, { force: true });
    removed.push(file);
  }
  return removed;
}


/** A spool file being written: {@link openSpool}. */
export interface Spool {
  /** The file's path. */
  readonly file: string;
  /** Appends a chunk; a failure of the local disk is a shadow error saying nothing was stored. */
  write(chunk: Uint8Array): Promise<void>;
  /** Closes the file (again: nothing). */
  close(): Promise<void>;
}

/**
 * Creates a new spool file in `dir` (mode 0600, a name {@link sweepStaleSpools} knows) for a
 * snapshot to be written into chunk by chunk; the caller removes the file.
 */
export async function openSpool(dir: string): Promise<Spool> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!swept.has(dir)) sweepStaleSpools(dir);
  const file = path.join(dir, `snapshot-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.db`);
  const fh = await fsp.open(file, "wx", 0o600).catch((err: unknown) => {
    throw spoolError(file, err);
  });
  let closed: Promise<void> | undefined;
  return {
    file,
    async write(chunk) {
      try {
        for (let done = 0; done < chunk.length; ) done += (await fh.write(chunk, done, chunk.length - done)).bytesWritten;
      } catch (err) {
        throw spoolError(file, err);
      }
    },
    close: () => (closed ??= fh.close()),
  };
}

/** The spool's own disk (not the sender) failed: say where, and that nothing was stored. */
function spoolError(file: string, err: unknown): unknown {
  return SPOOL_ERRNOS.has((err as NodeJS.ErrnoException).code ?? "") ? asBackendError("shadow", "spool a snapshot to", file, err) : err;
}

/**
 * Throws E_INPUT, naming what is wrong, unless `file` is a whole SQLite database: the magic
 * string, a valid page size, a size of whole pages that matches the header's page count (when
 * the header's count is valid), and a clean `PRAGMA quick_check`.
 */
export function checkSnapshotFile(file: string, version: number): void {
  const what = `snapshot of version ${version}`;
  const size = fs.statSync(file).size;
  const header = Buffer.alloc(HEADER_BYTES);
  const fd = fs.openSync(file, "r");
  try {
    fs.readSync(fd, header, 0, HEADER_BYTES, 0);
  } finally {
    fs.closeSync(fd);
  }
  const hint = "send a complete SQLite file: take it with the backup API (sqlite3 .backup, or better-sqlite3 db.backup()), not a copy of a file being written";
  if (size < HEADER_BYTES || !header.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new InputError(`${what}: not a SQLite database (${size < HEADER_BYTES ? `${size} bytes, shorter than the 100-byte header` : "no \"SQLite format 3\" header"})`, { hint });
  }
  const raw = header.readUInt16BE(16);
  const pageSize = raw === 1 ? 65536 : raw;
  if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) {
    throw new InputError(`${what}: the header's page size ${raw} is not a power of two from 512 to 65536`, { hint });
  }
  if (size % pageSize !== 0) {
    throw new InputError(`${what}: the file has ${size} bytes, not a whole number of ${pageSize}-byte pages`, { hint });
  }
  const pages = header.readUInt32BE(28);
  // The in-header size is valid only when "version-valid-for" matches the change counter.
  if (pages > 0 && header.readUInt32BE(92) === header.readUInt32BE(24) && pages * pageSize !== size) {
    throw new InputError(`${what}: header says ${pages} pages of ${pageSize} bytes = ${pages * pageSize}, file has ${size}`, { hint });
  }
  let rows: string[];
  try {
    const db = new Database(file, { fileMustExist: true });
    try {
      // Read through a memory map: the same check without a pread system call per page, most
      // of its cost on a big file.
      db.pragma(`mmap_size = ${MMAP_BYTES}`);
      rows = (db.pragma("quick_check") as { quick_check: string }[]).map((r) => r.quick_check);
    } finally {
      db.close();
    }
  } catch (err) {
    throw new InputError(`${what}: not a readable SQLite database: ${(err as Error).message}`, { hint, cause: err });
  }
  if (rows.length !== 1 || rows[0] !== "ok") {
    throw new InputError(`${what} fails quick_check: ${rows.slice(0, 3).join("; ")}${rows.length > 3 ? ` (and ${rows.length - 3} more)` : ""}`, { hint });
  }
}
