/**
 * Opening a file named by someone else (a spool file, a snapshot_path) only if it is a regular
 * file: a FIFO, a device, a directory or a symbolic link is refused before a byte is read, and
 * nothing here can block the event loop.
 */
import fs from "node:fs";
import fsp, { type FileHandle } from "node:fs/promises";
import { InputError } from "./errors.js";

/**
 * O_NOFOLLOW: a symbolic link put in place after the lstat fails with ELOOP instead of being
 * followed. O_NONBLOCK: a FIFO put in place after the lstat opens at once instead of waiting
 * for a writer (and is then refused by the fstat).
 */
const OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

/** lstat failures that say the path itself is unusable. */
const BAD_PATH_CODES = new Set(["EACCES", "EPERM", "ENOTDIR", "ELOOP", "ENAMETOOLONG"]);

/** A regular file opened for reading, and its size when it was opened. */
export interface RegularFile {
  readonly handle: FileHandle;
  readonly size: number;
}

/** What a file is, in words: "a FIFO", "a symbolic link", … */
export function fileKind(st: fs.Stats): string {
  if (st.isFile()) return "a regular file";
  if (st.isSymbolicLink()) return "a symbolic link";
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a FIFO";
  if (st.isSocket()) return "a socket";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  return "not a regular file";
}

function notRegular(file: string, kind: string, what: string): InputError {
  return new InputError(`${what} ${file} is ${kind}, not a regular file; it was not read`, {
    hint: "write the data to a regular file (a temp name, then a rename); links, FIFOs and devices are refused",
  });
}

/**
 * Opens `file` if, and only if, it is a regular file (not through a symbolic link). Returns
 * null when it does not exist; throws `E_INPUT` naming what it is otherwise. `what` names the
 * file in the message ("spool file", "snapshot_path").
 */
export async function openRegularFile(file: string, what: string): Promise<RegularFile | null> {
  let st: fs.Stats;
  try {
    st = await fsp.lstat(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return null;
    // The file's fault, not a passing condition: retrying would not help.
    if (code !== undefined && BAD_PATH_CODES.has(code)) throw new InputError(`${what} ${file}: cannot read it: ${code}`, { cause: err });
    throw err;
  }
  if (!st.isFile()) throw notRegular(file, fileKind(st), what);
  let handle: FileHandle;
  try {
    handle = await fsp.open(file, OPEN_FLAGS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return null;
    // Replaced by a symbolic link between the lstat and the open.
    if (code === "ELOOP") throw notRegular(file, "a symbolic link", what);
    throw new InputError(`${what} ${file}: cannot open it: ${code ?? (err as Error).message}`, { cause: err });
  }
  try {
    const opened = await handle.stat();
    // What was opened must be what was checked: a swap between the two is refused too.
    if (!opened.isFile()) throw notRegular(file, fileKind(opened), what);
    if (opened.ino !== st.ino || opened.dev !== st.dev) throw notRegular(file, "a file that was replaced while it was opened", what);
    return { handle, size: opened.size };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/**
 * Reads an opened regular file whole, asynchronously, but never more than `limit` bytes:
 * returns null when it holds more (it may have grown since it was opened).
 */
export async function readLimited(file: RegularFile, limit: number): Promise<Buffer | null> {
  if (file.size > limit) return null;
  // One byte more than the size seen tells whether it grew; growth is read on, up to the limit.
  let buf = Buffer.allocUnsafe(file.size + 1);
  let got = 0;
  for (;;) {
    if (got === buf.length) {
      const bigger = Buffer.allocUnsafe(Math.min(limit + 1, buf.length * 2));
      buf.copy(bigger, 0, 0, got);
      buf = bigger;
    }
    const { bytesRead } = await file.handle.read(buf, got, buf.length - got, got);
    if (bytesRead === 0) return buf.subarray(0, got);
    got += bytesRead;
    if (got > limit) return null;
  }
}
