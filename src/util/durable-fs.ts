/**
 * Small durable-file helpers shared by the file backend, restore and compaction.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";

/** Suffix of files being written; a writer that finds them after a crash removes them. */
export const TMP_SUFFIX = ".tmp";

/** Writes all of `buf` at `position`, looping over short writes. */
export function writeAll(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, position + done);
}

/** Reads exactly `buf.length` bytes at `position`. */
export function readAll(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw new Error(`unexpected end of file at offset ${position + done}`);
    done += n;
  }
}

/** fsyncs a directory, so that a create, rename or unlink in it survives a crash. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** fsyncs a file by path. */
export function fsyncFile(file: string): void {
  const fd = fs.openSync(file, "r+");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Mode of every file tidemark writes into a backup: the owner's alone, whatever the umask. */
export const PRIVATE_FILE_MODE = 0o600;
/** Mode of every directory tidemark creates for a backup. */
export const PRIVATE_DIR_MODE = 0o700;

/**
 * Writes a whole file via a temp name and a rename, with fsyncs: it appears complete or not at
 * all, with mode 0600.
 */
export function writeFileDurably(file: string, data: Uint8Array): void {
  const tmp = file + TMP_SUFFIX;
  const fd = fs.openSync(tmp, "w", PRIVATE_FILE_MODE);
  try {
    try {
      // A temp file left by a crash keeps its old mode through "w": set it.
      fs.fchmodSync(fd, PRIVATE_FILE_MODE);
      writeAll(fd, data, 0);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    // A full disk, say: the half-written temp file goes, the old file stays as it was.
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fsyncDir(path.dirname(file));
}

/** {@link fsyncDir} on libuv's thread pool: the event loop goes on meanwhile. */
export async function fsyncDirAsync(dir: string): Promise<void> {
  const fh = await fsp.open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** {@link writeFileDurably} on libuv's thread pool: no write, fsync or rename blocks the event loop. */
export async function writeFileDurablyAsync(file: string, data: Uint8Array): Promise<void> {
  const tmp = file + TMP_SUFFIX;
  try {
    const fh = await fsp.open(tmp, "w", PRIVATE_FILE_MODE);
    try {
      await fh.chmod(PRIVATE_FILE_MODE);
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await fsyncDirAsync(path.dirname(file));
}

/** Removes a SQLite file and its -wal, -shm and -journal companions, if present. */
export function removeDatabaseFiles(file: string): void {
  for (const suffix of ["", "-wal", "-shm", "-journal"]) fs.rmSync(file + suffix, { force: true });
}
