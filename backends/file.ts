/**
 * The file backend: one directory per backup.
 *
 * Layout (docs/format.md has the bytes):
 *   tidemark.json, generations.json  the core's documents
 *   LOCK                    the writer's PID; a second writer is refused
 *   log-NNNNNNNNNN.tml      one log per generation; the highest number is live
 *   snap-<version>-<id>.tms snapshot blobs
 *   *.tmp                   files being written; the writer removes leftovers when it locks
 *
 * The directory tidemark creates is 0700 and every file 0600, whatever the umask: an unencrypted
 * backup is a copy of the database.
 *
 * An append is one positioned write plus one fdatasync. A new generation is written beside the
 * others and appears by rename, with a directory fsync after every create and rename.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  BackendError,
  PRIVATE_DIR_MODE,
  PRIVATE_FILE_MODE,
  TidemarkError,
  TMP_SUFFIX,
  asBackendError,
  fsyncDir,
  fsyncDirAsync,
  isProcessAlive,
  vanished,
  writeAll,
  writeFileDurablyAsync,
  type BlobListing,
  type BlobReader,
  type DocumentName,
  type GenerationListing,
  type LogChunk,
  type Logger,
  type StagedGeneration,
  type Storage,
  type StorageFactory,
  type StorageOptions,
  type WriterLock,
} from "../src/backend-kit.js";

const DRIVER_NAME = "file";
const LOCK_FILE = "LOCK";
const LOG_RE = /^log-(\d{10})\.tml$/;
const SNAP_RE = /^snap-\d{20}-[0-9a-f]{8}\.tms$/;
const READ_CHUNK = 4 << 20;
/** Bytes of a snapshot blob written between two fdatasyncs of it. */
const BLOB_SYNC_EVERY = 1 << 20;

/** Opens the file backend at a `file:` URL. */
export const createStorage: StorageFactory = async (url, options) => {
  if (url.protocol !== "file:") {
    throw new BackendError(DRIVER_NAME, "open", url.href, `expected a file: URL, got ${url.protocol}`);
  }
  return new FileStorage(fileURLToPath(url), options);
};

function logName(id: number): string {
  return `log-${String(id).padStart(10, "0")}.tml`;
}

/** A generation's log index: beside its log, never fsynced (the core checks it against the log). */
function indexName(id: number): string {
  return `log-${String(id).padStart(10, "0")}.tmi`;
}

/** The file backend; see the module comment. */
export class FileStorage implements Storage {
  readonly kind = DRIVER_NAME;
  readonly location: string;
  readonly atomicAppends = false;
  readonly #dir: string;
  readonly #log: Logger;
  readonly #groupCommit: boolean;
  /** The log appends go to, opened at the first append. */
  #live: { id: number; fd: number; end: number } | null = null;
  /** Set after an append fails in a way that leaves the log's tail unknown. */
  #broken: Error | null = null;

  constructor(dir: string, options: StorageOptions) {
    this.#dir = dir;
    this.location = dir;
    this.#log = options.log.child({ dir });
    this.#groupCommit = options.groupCommit ?? false;
  }

  #path(name: string): string {
    return path.join(this.#dir, name);
  }

  async create(): Promise<void> {
    try {
      if (fs.statSync(this.#dir, { throwIfNoEntry: false })?.isFile()) {
        throw new TidemarkError("E_EXISTS", `${this.#dir} is a file, not a directory`, {
          hint: "a file backup is a directory: give init the path of a new or empty one",
        });
      }
      // Parents it creates too: a backup under a new tree is private all the way.
      fs.mkdirSync(this.#dir, { recursive: true, mode: PRIVATE_DIR_MODE });
      const entries = fs.readdirSync(this.#dir);
      if (entries.length > 0) {
        throw new TidemarkError("E_EXISTS", `${this.#dir} is not empty (${entries.length} entries) and holds no backup`, {
          hint: "give init a new or empty directory",
        });
      }
      fsyncDir(path.dirname(this.#dir));
    } catch (err) {
      throw asBackendError(DRIVER_NAME, "create", this.#dir, err);
    }
  }

  async readDocument(name: DocumentName): Promise<Buffer | undefined> {
    try {
      return fs.readFileSync(this.#path(name));
    } catch (err) {
      // ENOENT: the directory or the document does not exist.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return undefined;
      // ENOTDIR: the location is a file (a database, say), which init could not turn into a backup either.
      if (code === "ENOTDIR") {
        throw new TidemarkError("E_NO_BACKUP", `${this.#dir} is a file, not a backup directory`, {
          hint: "a file backup is a directory (the one holding tidemark.json): give its path, or for init a new or empty directory's",
        });
      }
      throw asBackendError(DRIVER_NAME, "read", this.#path(name), err);
    }
  }

  async writeDocument(name: DocumentName, bytes: Buffer): Promise<void> {
    try {
      await writeFileDurablyAsync(this.#path(name), bytes);
    } catch (err) {
      throw asBackendError(DRIVER_NAME, "write", this.#path(name), err);
    }
  }

  async lock(): Promise<WriterLock> {
    const lock = FileLock.acquire(this.#path(LOCK_FILE), this.#log);
    // The single writer removes what interrupted writes left.
    for (const n of fs.readdirSync(this.#dir)) {
      if (n.endsWith(TMP_SUFFIX)) {
        this.#log.info({ file: n }, "removing a temp file left by an interrupted write");
        fs.rmSync(this.#path(n), { force: true });
      }
    }
    return lock;
  }

  async listGenerations(): Promise<GenerationListing[]> {
    try {
      return fs
        .readdirSync(this.#dir)
        .map((n) => LOG_RE.exec(n))
        .filter((m): m is RegExpExecArray => m !== null)
        .map((m) => ({ id: Number(m[1]), size: fs.statSync(this.#path(m[0])).size }))
        .sort((a, b) => a.id - b.id);
    } catch (err) {
      throw asBackendError(DRIVER_NAME, "list", this.#dir, err);
    }
  }

  async *readLog(id: number, from: number, to: number): AsyncGenerator<LogChunk> {
    const file = this.#path(logName(id));
    let fh: Awaited<ReturnType<typeof fsp.open>>;
    try {
      fh = await fsp.open(file, "r");
    } catch (err) {
      throw vanished(DRIVER_NAME, "open", file, err);
    }
    const readChunk = async (offset: number): Promise<LogChunk> => {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, to - offset));
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return { segment: file, offset, segmentStart: 0, bytes: buf.subarray(0, got), segmentEnd: got < buf.length || offset + got >= to };
    };
    // One chunk is read ahead while the caller works through the one before it. Its failure
    // is raised where it is awaited (a caller that stops early never sees it).
    const readAhead = (offset: number): Promise<LogChunk> => {
      const read = readChunk(offset);
      read.catch(() => {});
      return read;
    };
    let ahead = from < to ? readAhead(from) : undefined;
    try {
      while (ahead) {
        const chunk = await ahead;
        ahead = chunk.segmentEnd ? undefined : readAhead(chunk.offset + chunk.bytes.length);
        yield chunk;
      }
    } finally {
      // A caller that stops early leaves a read in flight: it ends before the file closes.
      await ahead?.catch(() => {});
      await fh.close();
    }
  }

  #liveLog(id: number): { id: number; fd: number; end: number } {
    if (this.#broken) throw this.#broken;
    if (this.#live?.id === id) return this.#live;
    this.#closeLive();
    const file = this.#path(logName(id));
    try {
      const fd = fs.openSync(file, "r+");
      this.#live = { id, fd, end: fs.fstatSync(fd).size };
    } catch (err) {
      throw asBackendError(DRIVER_NAME, "open", file, err);
    }
    return this.#live;
  }

  #closeLive(): void {
    if (this.#live) fs.closeSync(this.#live.fd);
    this.#live = null;
  }

  appendSync(id: number, bytes: Buffer): void {
    const live = this.#liveLog(id);
    const at = live.end;
    try {
      writeAll(live.fd, bytes, at);
      fs.fdatasyncSync(live.fd);
    } catch (err) {
      this.#undoAppend(live, at, err);
      throw asBackendError(DRIVER_NAME, "append", this.#path(logName(id)), err);
    }
    live.end = at + bytes.length;
  }

  async append(id: number, bytes: Buffer): Promise<void> {
    if (!this.#groupCommit) return this.appendSync(id, bytes);
    // The write and the fdatasync on libuv's thread pool, so that several backups' flushes
    // overlap and the file system's journal commits them together.
    const live = this.#liveLog(id);
    const at = live.end;
    live.end = at + bytes.length;
    try {
      await writeAllAsync(live.fd, bytes, at);
      await new Promise<void>((resolve, reject) => fs.fdatasync(live.fd, (err) => (err ? reject(err) : resolve())));
    } catch (err) {
      live.end = at;
      this.#undoAppend(live, at, err);
      throw asBackendError(DRIVER_NAME, "append", this.#path(logName(id)), err);
    }
  }

  /** After a failed append, cuts the log back to where it began, so the next append is clean. */
  #undoAppend(live: { fd: number }, at: number, cause: unknown): void {
    try {
      fs.ftruncateSync(live.fd, at);
      fs.fdatasyncSync(live.fd);
    } catch (err) {
      // The file's tail is unknown now; refuse appends until it is reopened and rescanned.
      this.#broken = new BackendError(DRIVER_NAME, "append", this.#dir, "log tail could not be repaired after a failed write", {
        cause: err,
        hint: "restart tidemark; the torn tail is dropped at open",
      });
      this.#log.error({ err, cause }, "log tail could not be repaired after a failed write");
    }
  }

  async truncate(id: number, size: number): Promise<void> {
    const live = this.#liveLog(id);
    try {
      fs.ftruncateSync(live.fd, size);
      fs.fdatasyncSync(live.fd);
      live.end = size;
    } catch (err) {
      throw asBackendError(DRIVER_NAME, "truncate", this.#path(logName(id)), err);
    }
  }

  async createGeneration(id: number, bytes: Buffer): Promise<void> {
    const staged = await this.stageGeneration(id, bytes);
    await staged.commit(Buffer.alloc(0));
  }

  /**
   * Writes the log beside the others as a temp file and fsyncs it; the commit appends the
   * rest, fsyncs again, renames and fsyncs the directory. All of it on libuv's thread pool.
   */
  async stageGeneration(id: number, bytes: Buffer): Promise<StagedGeneration> {
    const file = this.#path(logName(id));
    const tmp = file + TMP_SUFFIX;
    let fh: fsp.FileHandle | null = null;
    const discard = async () => {
      await fh?.close().catch(() => {});
      fh = null;
      await fsp.rm(tmp, { force: true });
    };
    try {
      fh = await fsp.open(tmp, "w", PRIVATE_FILE_MODE);
      // A temp file left by a crash keeps its old mode through "w": set it.
      await fh.chmod(PRIVATE_FILE_MODE);
      await fh.writeFile(bytes);
      await fh.datasync();
    } catch (err) {
      await discard().catch(() => {});
      throw asBackendError(DRIVER_NAME, "create generation", file, err);
    }
    return {
      commit: async (more) => {
        try {
          if (!fh) throw new Error("the staged generation was discarded");
          if (more.length > 0) await fh.write(more, 0, more.length, bytes.length);
          await fh.sync();
          await fh.close();
          fh = null;
          await fsp.rename(tmp, file);
          await fsyncDirAsync(this.#dir);
        } catch (err) {
          await discard().catch(() => {});
          throw asBackendError(DRIVER_NAME, "create generation", file, err);
        }
        this.#closeLive();
      },
      discard,
    };
  }

  async deleteGeneration(id: number): Promise<void> {
    if (this.#live?.id === id) this.#closeLive();
    // The index first: a log may be left without one, never an index without its log.
    await fsp.rm(this.#path(indexName(id)), { force: true });
    await fsp.rm(this.#path(logName(id)), { force: true });
  }

  async readIndex(id: number): Promise<Buffer | undefined> {
    try {
      return await fsp.readFile(this.#path(indexName(id)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw asBackendError(DRIVER_NAME, "read", this.#path(indexName(id)), err);
    }
  }

  /** Written to a temp file and renamed into place, without fsync: a lost or torn index is only ignored. */
  async writeIndex(id: number, bytes: Buffer): Promise<void> {
    const file = this.#path(indexName(id));
    try {
      await fsp.writeFile(file + TMP_SUFFIX, bytes, { mode: PRIVATE_FILE_MODE });
      await fsp.rename(file + TMP_SUFFIX, file);
    } catch (err) {
      await fsp.rm(file + TMP_SUFFIX, { force: true }).catch(() => {});
      throw asBackendError(DRIVER_NAME, "write", file, err);
    }
  }

  async putBlob(name: string, source: AsyncIterable<Uint8Array>): Promise<number> {
    const final = this.#path(name);
    const tmp = final + TMP_SUFFIX;
    let size = 0;
    try {
      const fh = await fsp.open(tmp, "wx", PRIVATE_FILE_MODE);
      try {
        let unsynced = 0;
        for await (const chunk of source) {
          await fh.write(chunk);
          size += chunk.length;
          unsynced += chunk.length;
          // One MiB of dirty data at a time: an append's fdatasync meanwhile waits for that
          // at most, not for the whole blob queued at the disk by one final fsync.
          if (unsynced >= BLOB_SYNC_EVERY) {
            await fh.datasync();
            unsynced = 0;
          }
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, final);
      await fsyncDirAsync(this.#dir);
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw asBackendError(DRIVER_NAME, "write snapshot", final, err);
    }
    return size;
  }

  async *openBlob(name: string): AsyncGenerator<Buffer> {
    const file = this.#path(name);
    try {
      yield* fs.createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>;
    } catch (err) {
      throw vanished(DRIVER_NAME, "read", file, err);
    }
  }

  async readBlob(name: string): Promise<BlobReader> {
    const file = this.#path(name);
    let fh: Awaited<ReturnType<typeof fsp.open>>;
    try {
      fh = await fsp.open(file, "r");
    } catch (err) {
      throw vanished(DRIVER_NAME, "read", file, err);
    }
    return {
      read: async (into, length, position) => {
        let done = 0;
        while (done < length) {
          const { bytesRead } = await fh.read(into, done, length - done, position + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return done;
      },
      close: () => fh.close(),
    };
  }

  async listBlobs(): Promise<BlobListing[]> {
    return fs
      .readdirSync(this.#dir)
      .filter((n) => SNAP_RE.test(n))
      .sort()
      .map((name) => ({ name, size: fs.statSync(this.#path(name)).size }));
  }

  async deleteBlob(name: string): Promise<void> {
    await fsp.rm(this.#path(name), { force: true });
  }

  async close(): Promise<void> {
    this.#closeLive();
  }
}

function writeAllAsync(fd: number, buf: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number) => {
      if (done === buf.length) return resolve();
      fs.write(fd, buf, done, buf.length - done, position + done, (err, n) => (err ? reject(err) : step(done + n)));
    };
    step(0);
  });
}

/** The writer lock: a LOCK file naming the holder. A lock whose process is gone is taken over. */
class FileLock implements WriterLock {
  readonly #file: string;
  readonly #token: string;

  private constructor(file: string, token: string) {
    this.#file = file;
    this.#token = token;
  }

  static acquire(file: string, log: Logger): FileLock {
    const token = JSON.stringify({ pid: process.pid, host: os.hostname(), since: new Date().toISOString() });
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = fs.openSync(file, "wx", PRIVATE_FILE_MODE);
        try {
          fs.writeSync(fd, token);
        } finally {
          fs.closeSync(fd);
        }
        return new FileLock(file, token);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw asBackendError(DRIVER_NAME, "lock", file, err);
      }
      let held: string;
      try {
        held = fs.readFileSync(file, "utf8");
      } catch {
        continue; // released meanwhile
      }
      let holder: { pid?: number; host?: string };
      try {
        holder = JSON.parse(held);
      } catch {
        holder = {};
      }
      const dir = path.dirname(file);
      if (holder.host !== undefined && holder.host !== os.hostname()) {
        throw new TidemarkError("E_LOCKED", `${dir} is locked by PID ${holder.pid} on host ${holder.host}`, {
          hint: `stop that writer; if it is gone for good, remove ${file}`,
        });
      }
      if (typeof holder.pid === "number" && isProcessAlive(holder.pid)) {
        throw new TidemarkError("E_LOCKED", `${dir} is locked by another writer, PID ${holder.pid}`, {
          hint: `stop PID ${holder.pid} first (only one process may write a backup); if no such process runs, remove ${file}`,
        });
      }
      log.warn({ file, pid: holder.pid }, "taking over a lock left by a process that is gone");
      // Remove the stale lock only if it is still the one read above.
      try {
        if (fs.readFileSync(file, "utf8") === held) fs.rmSync(file);
      } catch {
        // gone already
      }
    }
    throw new TidemarkError("E_LOCKED", `could not take the writer lock ${file}`, { hint: "another writer is starting; try again" });
  }

  check(): void {}

  async release(): Promise<void> {
    try {
      if (fs.readFileSync(this.#file, "utf8") === this.#token) fs.rmSync(this.#file);
    } catch {
      // already gone
    }
  }
}
