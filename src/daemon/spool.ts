/**
 * The spool directory: a way in for hosts that cannot make HTTP calls.
 *
 * A host writes `<spool>/<db>/<version>.json` atomically (a temp name, then a rename) and
 * waits for the file to disappear: the daemon deletes it only once the change is durable. A
 * file that cannot be taken moves to `<spool>/rejected/` with a `.reason` file beside it.
 * Files are taken in version order, including those present when the daemon starts.
 *
 * Only regular files are taken (util/regular-file.ts): a FIFO, a device, a directory or a
 * symbolic link named like a change, or given as its `snapshot_path`, is rejected unread, and
 * every read is asynchronous and bounded, so that no file can stall the daemon.
 *
 * Its directories are 0700, or 2770 of the config's `group` (access-group.ts), whatever the umask.
 */
import fs from "node:fs";
import path from "node:path";
import { watch, type FSWatcher } from "chokidar";
import { changeFromWire, parseWireChange } from "../model/change-json.js";
import { DB_NAME_RE } from "./config.js";
import type { ManagedDatabase } from "./managed-database.js";
import { ConfigError, InputError, TidemarkError } from "../util/errors.js";
import type { Logger } from "../util/logger.js";
import { openRegularFile, readLimited } from "../util/regular-file.js";
import { SPOOL_DIR_MODE, SPOOL_FILE_MODE, applyAccess, type AccessGroup } from "./access-group.js";

const FILE_RE = /^([0-9]{1,15})\.json$/;
/** How long a version may wait for the ones before it before it is rejected as a gap. */
const GAP_GRACE_MS = 5_000;
/** How often the directories are read in case the watcher missed a file. */
const SWEEP_MS = 1_000;
/** Retry delay after a failure that is not the file's fault (the backend, a shutdown). */
const RETRY_MS = 1_000;
/** Codes that mean the file itself is bad: it is rejected rather than retried. */
const REJECT_CODES = new Set(["E_INPUT", "E_GAP", "E_STALE", "E_NONDETERMINISTIC", "E_TOO_LARGE", "E_REPLAY"]);

/** What the spool needs from the daemon. */
export interface SpoolContext {
  database(name: string): ManagedDatabase | undefined;
  maxChangeBytes(): number;
}

/** Watches a spool directory and feeds its files to the databases. */
export class Spool {
  readonly dir: string;
  readonly #ctx: SpoolContext;
  readonly #log: Logger;
  readonly #queues = new Map<string, DbQueue>();
  readonly #databases = new Set<string>();
  readonly #group: AccessGroup | undefined;
  #watcher: FSWatcher | null = null;
  #sweeper: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(dir: string, ctx: SpoolContext, log: Logger, group?: AccessGroup) {
    this.dir = dir;
    this.#ctx = ctx;
    this.#log = log.child({ component: "spool" });
    this.#group = group;
  }

  /** Makes a directory of the spool (and the spool itself), with the spool's mode and group. */
  #makeDir(dir: string): void {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    try {
      applyAccess(this.dir, this.#group, SPOOL_DIR_MODE);
      applyAccess(dir, this.#group, SPOOL_DIR_MODE);
    } catch (err) {
      throw new ConfigError(this.#group ? "group" : "spool", `cannot set the mode${this.#group ? ` and group ${this.#group.name}` : ""} of ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
        hint: this.#group ? "the daemon's user must be a member of that group (under systemd: SupplementaryGroups=)" : "the spool directory must belong to the daemon's user",
      });
    }
  }

  /** Creates the directories for `names` and starts watching; resolves once existing files are queued. */
  async start(names: readonly string[]): Promise<void> {
    this.#makeDir(path.join(this.dir, "rejected"));
    for (const n of names) this.addDatabase(n);
    // Links are not followed: what a link points to is never the spool's to watch or read.
    this.#watcher = watch(this.dir, { depth: 1, ignoreInitial: false, persistent: true, followSymlinks: false });
    this.#watcher.on("add", (file) => this.#found(file));
    this.#watcher.on("error", (err) => this.#log.error({ err }, "spool watcher failed"));
    await new Promise<void>((resolve) => this.#watcher!.once("ready", () => resolve()));
    // A safety net under the watcher: an event lost while it was starting, or on a file
    // system that does not report them, only delays a file by a sweep.
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_MS);
    this.#sweeper.unref();
    this.#sweep();
  }

  #sweep(): void {
    for (const db of this.#databases) {
      let names: string[];
      try {
        names = fs.readdirSync(path.join(this.dir, db));
      } catch {
        continue;
      }
      for (const n of names) this.#found(path.join(this.dir, db, n));
    }
  }

  /** Makes `<spool>/<name>/` for a database that is now served, and takes any files in it. */
  addDatabase(name: string): void {
    this.#makeDir(path.join(this.dir, name));
    this.#databases.add(name);
    if (this.#watcher) this.#sweep();
  }

  /** Stops watching and waits for files being ingested. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#sweeper) clearInterval(this.#sweeper);
    await this.#watcher?.close();
    await Promise.all([...this.#queues.values()].map((q) => q.close()));
  }

  #found(file: string): void {
    if (this.#closed) return;
    const rel = path.relative(this.dir, file).split(path.sep);
    if (rel.length !== 2) return;
    const [db, name] = rel as [string, string];
    if (db === "rejected") return;
    const m = FILE_RE.exec(name);
    if (!m) return; // temp files and anything else are not ours to take
    if (!DB_NAME_RE.test(db)) {
      this.#log.warn({ file }, "ignoring a spool file for an invalid database name");
      return;
    }
    let q = this.#queues.get(db);
    if (!q) {
      q = new DbQueue(db, this.dir, this.#ctx, this.#log.child({ db }), this.#group);
      this.#queues.set(db, q);
    }
    q.add(Number(m[1]));
  }
}

/** The spooled versions of one database, taken lowest first, one at a time. */
class DbQueue {
  readonly #db: string;
  readonly #spool: string;
  readonly #ctx: SpoolContext;
  readonly #log: Logger;
  readonly #pending = new Set<number>();
  #running: Promise<void> | null = null;
  #waitingSince = new Map<number, number>();
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  readonly #group: AccessGroup | undefined;

  constructor(db: string, spool: string, ctx: SpoolContext, log: Logger, group: AccessGroup | undefined) {
    this.#db = db;
    this.#spool = spool;
    this.#ctx = ctx;
    this.#log = log;
    this.#group = group;
  }

  add(version: number): void {
    this.#pending.add(version);
    // A new file may be the one a waiting version needs: look now rather than at the timer.
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#kick();
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#running;
  }

  /** Starts draining now, or after `delay` ms. */
  #kick(delay = 0): void {
    if (this.#closed || this.#running || this.#timer) return;
    if (delay > 0) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#kick();
      }, delay);
      this.#timer.unref();
      return;
    }
    this.#running = this.#drain().then(
      (again) => {
        this.#running = null;
        if (again !== undefined) this.#kick(again);
        else if (this.#pending.size > 0) this.#kick();
      },
      (err: unknown) => {
        this.#running = null;
        this.#log.error({ err }, "spool failed; will retry");
        this.#kick(RETRY_MS);
      },
    );
  }

  /** Takes files lowest version first; returns a delay when it must look again later. */
  async #drain(): Promise<number | undefined> {
    while (!this.#closed && this.#pending.size > 0) {
      const version = Math.min(...this.#pending);
      const outcome = await this.#take(version);
      if (outcome === "retry") return RETRY_MS;
      if (outcome === "wait") return 500;
      this.#pending.delete(version);
      this.#waitingSince.delete(version);
    }
    return undefined;
  }

  /** Ingests one file; says whether it is done with, should wait for earlier files, or be retried. */
  async #take(version: number): Promise<"done" | "wait" | "retry"> {
    const file = path.join(this.#spool, this.#db, `${version}.json`);
    const db = this.#ctx.database(this.#db);
    let text: string | TidemarkError | null;
    try {
      text = await readSpoolFile(file, this.#ctx.maxChangeBytes());
    } catch (err) {
      if (!(err instanceof TidemarkError)) throw err;
      this.#reject(file, version, err, err.code);
      return "done";
    }
    if (text === null) return "done"; // taken away meanwhile
    if (typeof text !== "string") {
      this.#reject(file, version, text, "E_TOO_LARGE");
      return "done";
    }
    let snapshot: Awaited<ReturnType<typeof openRegularFile>> = null;
    try {
      if (!db) throw new TidemarkError("E_NOT_FOUND", `no database named "${this.#db}" is configured`);
      const wire = parseWireChange(text, { allowSnapshotPath: true });
      if (wire.version !== version) throw new InputError(`the file is named ${version}.json but holds version ${wire.version}`);
      const head = db.head().version;
      if (version > head + 1 && !wire.snapshotPath) {
        // An earlier version may still be on its way; give it a moment before calling it a gap.
        const since = this.#waitingSince.get(version) ?? Date.now();
        this.#waitingSince.set(version, since);
        if (Date.now() - since < GAP_GRACE_MS) return "wait";
      }
      if (wire.snapshotPath && !path.isAbsolute(wire.snapshotPath)) {
        throw new InputError(`snapshot_path must be absolute, got ${JSON.stringify(wire.snapshotPath)}`);
      }
      if (wire.snapshotPath) {
        snapshot = await openRegularFile(wire.snapshotPath, "snapshot_path");
        if (!snapshot) throw new InputError(`snapshot_path ${wire.snapshotPath} does not exist`);
      }
      const opened = snapshot;
      // Only the bytes there were at the open: a file still being written does not stream on forever.
      const openSnapshot = () => opened!.handle.createReadStream({ start: 0, ...(opened!.size > 0 && { end: opened!.size - 1 }), highWaterMark: 1 << 20, autoClose: false });
      const result = await db.ingest(changeFromWire(wire, openSnapshot), Buffer.byteLength(text));
      fs.rmSync(file, { force: true });
      this.#log.debug({ version, action: result.action }, "spooled change is durable");
      return "done";
    } catch (err) {
      const code = err instanceof TidemarkError ? err.code : "E_INTERNAL";
      if (REJECT_CODES.has(code) || code === "E_NOT_FOUND") {
        this.#reject(file, version, err as Error, code);
        return "done";
      }
      this.#log.warn({ version, code, err }, "could not take a spooled change; will retry");
      return "retry";
    } finally {
      await snapshot?.handle.close();
    }
  }

  #reject(file: string, version: number, err: Error, code: string): void {
    const base = path.join(this.#spool, "rejected", `${this.#db}.${version}.${Date.now()}.json`);
    const hint = err instanceof TidemarkError && err.hint ? `\nTry: ${err.hint}` : "";
    fs.writeFileSync(`${base}.reason`, `${code}: ${err.message}${hint}\n`, { mode: 0o600 });
    applyAccess(`${base}.reason`, this.#group, SPOOL_FILE_MODE);
    fs.renameSync(file, base);
    this.#log.warn({ version, code, moved: base }, "rejected a spooled change");
  }
}

/**
 * Reads a spool file if it is a regular file, checking its size first so that a huge one is
 * refused rather than loaded. Returns null if it is gone, or the error for one over `limit`
 * bytes; throws E_INPUT for anything but a regular file.
 */
async function readSpoolFile(file: string, limit: number): Promise<string | null | TidemarkError> {
  const opened = await openRegularFile(file, "spool file");
  if (!opened) return null;
  try {
    const bytes = await readLimited(opened, limit);
    if (bytes === null) {
      const size = opened.size > limit ? `is ${opened.size} bytes` : "grew while it was read";
      return new TidemarkError("E_TOO_LARGE", `the file ${size}, over the ${limit}-byte limit`);
    }
    return bytes.toString("utf8");
  } finally {
    await opened.handle.close();
  }
}
