/**
 * The shadow: a warm SQLite database per write-ahead backup holding the backup's state, where
 * every incoming change is applied before it is acknowledged (DESIGN.md, "An ack means
 * restorable"). A change whose statements fail there is refused with E_REPLAY before anything
 * is durable.
 *
 * The state after every record but the last is settled; the last record stays applied in a
 * savepoint of an open transaction, so that a rewind is a ROLLBACK TO it and each change is
 * applied once. Settled changes are committed every COMMIT_EVERY changes (and at a clean close,
 * and before a compaction copies the file), not one by one: a commit writes the WAL, and a crash
 * rebuilds the shadow anyway. A crash
 * leaves no `.clean` marker (it is written at close and removed at open), so the next open
 * rebuilds the shadow by a replay; a clean one resyncs by comparing the marker with the head.
 * Open connections are capped (least recently used closed first), each with a small cache.
 *
 * Where it lives: `TIDEMARK_SHADOW_DIR`, else `$STATE_DIRECTORY/shadows` (systemd), else
 * `$XDG_STATE_HOME/tidemark/shadows` (`~/.local/state/...`): one file per backup location,
 * named by a hash of it; directories 0700, files 0600.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import type { Backend, BackendHead, ChangeToStore } from "../backup/backup.js";
import type { Statement } from "../model/change.js";
import { BackendError, TidemarkError } from "../util/errors.js";
import { removeDatabaseFiles } from "../util/durable-fs.js";
import { replayInto } from "./replay.js";
import { Rewriter, type Rule } from "./rewrite.js";

/** Shadow connections open at once in a process; the least recently used is closed first. */
export const MAX_OPEN_SHADOWS = 32;
/** Settled changes held in the open transaction before it is committed. */
const COMMIT_EVERY = 256;
/** The savepoint holding the last change, the one a rewind undoes. */
const UNDO_LAST = "ROLLBACK TO tidemark_last; RELEASE tidemark_last";
/** Page cache per shadow connection, in KiB. */
const CACHE_KIB = 2048;

/** How a shadow is set up. */
export interface ShadowOptions {
  /** The directory of shadow files; {@link defaultShadowDir} by default. */
  readonly dir?: string;
  /** Rewrite rules applied to each statement, as restore applies them. */
  readonly rules?: readonly Rule[];
}

/** The per-user (or per-service) directory of shadow databases. */
export function defaultShadowDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TIDEMARK_SHADOW_DIR) return env.TIDEMARK_SHADOW_DIR;
  if (env.STATE_DIRECTORY) return path.join(env.STATE_DIRECTORY.split(":")[0]!, "shadows");
  return path.join(env.XDG_STATE_HOME || path.join(os.homedir(), ".local", "state"), "tidemark", "shadows");
}

interface Marker {
  readonly version: number;
  readonly prevVersion: number | null;
  readonly timestamp?: number;
  readonly mode: number;
}

/** A change applied in the shadow and not yet durable in the backup. */
export interface Trial {
  readonly head: BackendHead;
  /** The durable last change the trial's rewind rolled back, to put back if the trial fails. */
  readonly undone: ChangeToStore | null;
  /** Set when the rewind was done by a rebuild to the version before the last. */
  readonly rebuilt: boolean;
}

const openShadows = new Map<Shadow, true>();
/** The shadow last touched: the last key of openShadows, which a touch then leaves as it is. */
let mostRecent: Shadow | null = null;
let exitHooked = false;

/** A backup's shadow database. Calls must not overlap, as applyChange calls must not. */
export class Shadow {
  /** The shadow's SQLite file. */
  readonly file: string;
  readonly #marker: string;
  readonly #rewriter: Rewriter;
  #db: Database.Database | null = null;
  /** The head the state matches (the last change included); null when unknown. */
  #synced: BackendHead | null = null;
  /** The last durable change, applied in the open transaction; null when all is committed. */
  #last: ChangeToStore | null = null;
  /** Timestamps of the newest change in the state, and of the newest committed one. */
  #lastTs: number | undefined;
  #committedTs: number | undefined;
  /** The base's journal mode byte (header offset 18): 1 rollback, 2 WAL. */
  #mode = 1;
  #trial: Trial | null = null;
  #copying = 0;
  /** Settled changes in the open transaction, not yet committed. */
  #pending = 0;

  constructor(location: string, options: ShadowOptions = {}) {
    const dir = options.dir ?? defaultShadowDir();
    const key = crypto.createHash("sha256").update(location).digest("hex").slice(0, 32);
    this.file = path.join(dir, `${key}.db`);
    this.#marker = `${this.file}.clean`;
    this.#rewriter = new Rewriter(options.rules ?? []);
  }

  /** Whether the state is open and at `backend`'s head: prepare() would do nothing. */
  isWarm(backend: Backend): boolean {
    return this.#db !== null && this.#synced !== null && sameHead(this.#synced, backend.head());
  }

  /** Brings the state to `backend`'s head: resynced from a clean marker, else rebuilt by a replay. */
  async prepare(backend: Backend): Promise<void> {
    const head = backend.head();
    if (this.#db && this.#synced && sameHead(this.#synced, head)) return this.#touch();
    if (!this.#db && this.#synced && sameHead(this.#synced, head) && fs.existsSync(this.#marker)) {
      this.#open();
      return;
    }
    const marker = readMarker(this.#marker);
    if (!this.#db && marker && fs.existsSync(this.file)) {
      const status = await backend.status();
      if (status.version === marker.version && status.headTimestamp === marker.timestamp) {
        this.#mode = marker.mode;
        this.#lastTs = this.#committedTs = marker.timestamp;
        this.#open();
        this.#synced = backend.head();
        return;
      }
    }
    await this.#rebuild(backend, head.version);
    this.#synced = backend.head();
  }

  /**
   * prepare() without I/O beyond the shadow's own files, for synchronous callers: true when the
   * state matches the head (warm, resynced from a clean marker, or an empty backup).
   */
  prepareSync(backend: Backend): boolean {
    const head = backend.head();
    if (this.#synced && sameHead(this.#synced, head)) {
      if (!this.#db) {
        if (!fs.existsSync(this.#marker)) return false;
        this.#open();
      }
      return true;
    }
    if (this.#db) return false;
    const marker = readMarker(this.#marker);
    if (marker && marker.version === head.version && marker.prevVersion === head.prevVersion && fs.existsSync(this.file)) {
      this.#mode = marker.mode;
      this.#lastTs = this.#committedTs = marker.timestamp;
      this.#open();
      this.#synced = head;
      return true;
    }
    if (head.version !== 0) return false;
    removeDatabaseFiles(this.file);
    this.#mode = 1;
    this.#lastTs = this.#committedTs = undefined;
    this.#open();
    this.#synced = head;
    return true;
  }

  /** Forgets the state: the next prepare() resyncs or rebuilds it. */
  forget(): void {
    this.#synced = null;
  }

  /** The backup's last change was rewound (by the caller, just now): undo it here too. */
  rewound(backend: Backend): void {
    const db = this.#db;
    if (db && this.#last && this.#synced && db.inTransaction) {
      db.exec(UNDO_LAST);
      this.#last = null;
      this.#lastTs = this.#committedTs;
      this.#synced = backend.head();
    } else {
      this.#synced = null;
    }
  }

  /**
   * Applies `change` on the state before it is stored; throws E_REPLAY (the state as before)
   * when a statement fails. With `rewind`, the last change is undone first. The caller then
   * stores the change and calls settle() or abort().
   */
  async begin(backend: Backend, change: ChangeToStore, rewind: boolean): Promise<Trial> {
    let rebuilt = false;
    if (rewind && !this.#last) {
      await this.#rebuild(backend, backend.head().prevVersion ?? 0);
      rebuilt = true;
    }
    return this.#begin(backend, change, rewind && !rebuilt, rebuilt);
  }

  /** begin() for synchronous callers; null when the rewind it needs takes a rebuild (a replay). */
  beginSync(backend: Backend, change: ChangeToStore, rewind: boolean): Trial | null {
    if (rewind && !this.#last) return null;
    return this.#begin(backend, change, rewind, false);
  }

  #begin(backend: Backend, change: ChangeToStore, rollbackLast: boolean, rebuilt: boolean): Trial {
    const head = backend.head();
    let undone: ChangeToStore | null = null;
    const db = this.#connection();
    if (rollbackLast && this.#last) {
      db.exec(UNDO_LAST);
      undone = this.#last;
      this.#last = null;
      this.#lastTs = this.#committedTs;
    }
    this.#settleAndOpen(db);
    try {
      this.#run(db, change);
    } catch (err) {
      if (!this.#undoTrial(db)) {
        // SQLite rolled the whole transaction back (a full disk, say): settled changes went with it.
        this.#synced = null;
      } else if (undone) this.#reapply(undone);
      else if (rebuilt) this.#synced = null;
      throw err;
    }
    this.#trial = { head, undone, rebuilt };
    return this.#trial;
  }

  /** The trial's change is durable: it becomes the undoable last change. */
  settle(backend: Backend, change: ChangeToStore): void {
    this.#trial = null;
    this.#last = change;
    this.#lastTs = change.timestamp;
    this.#synced = backend.head();
  }

  /** Storing the trial's change failed: its statements are rolled back, the state follows the head. */
  abort(backend: Backend, trial: Trial): void {
    this.#trial = null;
    const db = this.#db;
    const kept = db ? this.#undoTrial(db) : false;
    const now = backend.head();
    if (!kept) {
      this.#synced = null;
    } else if (sameHead(now, trial.head)) {
      if (trial.undone) this.#reapply(trial.undone);
      this.#synced = trial.rebuilt ? null : now;
    } else {
      // The rewind was stored but not the change: the state is the rewound one.
      this.#synced = now.version === trial.head.prevVersion && now.prevVersion === null ? now : null;
    }
  }

  /**
   * Takes `file` (a checked snapshot, with `change`'s transaction already applied) as the new
   * state once `change` is durable. The file is moved.
   */
  replaceWith(backend: Backend, file: string, change: ChangeToStore): void {
    this.#closeConnection(false);
    removeDatabaseFiles(this.file);
    fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    fs.renameSync(file, this.file);
    this.#mode = readModeByte(this.file);
    this.#lastTs = this.#committedTs = change.timestamp;
    this.#open();
    this.#synced = backend.head();
  }

  /** Applies `change`'s statements to the database in `file` and commits; throws E_REPLAY. */
  applyToFile(file: string, change: ChangeToStore): void {
    const db = new Database(file, { fileMustExist: true });
    try {
      db.exec("BEGIN");
      this.#run(db, change);
      db.exec("COMMIT");
    } finally {
      db.close();
    }
  }

  /**
   * The settled state (every change but the last, which must be a whole version: not a
   * continuation), read straight from the shadow's main file without stalling ingest (which
   * goes on in the WAL: checkpoints are off until `release`), as a rollback-journal file when
   * the base was one. `open` streams it (once per attempt of the caller); a stream whose shadow
   * was closed or rebuilt meanwhile fails at its end, so that a torn file is never taken. Null
   * when the shadow cannot give it now.
   */
  settled(backend: Backend): { version: number; timestamp: number; open(): AsyncIterable<Buffer>; release(): void } | null {
    const head = backend.head();
    const db = this.#db;
    if (!db || !this.#last || this.#trial || !this.#synced || !sameHead(this.#synced, head)) return null;
    if (head.prevVersion === null || head.prevVersion === head.version || this.#committedTs === undefined) return null;
    const version = head.prevVersion;
    const timestamp = this.#committedTs;
    this.#commitSettled(db);
    // Only committed frames are copied into the main file; with checkpoints off until the
    // release, the main file then holds exactly the settled state while ingest goes on in the WAL.
    const reader = new Database(this.file, { fileMustExist: true });
    try {
      const [row] = reader.pragma("wal_checkpoint(PASSIVE)") as { busy: number; log: number; checkpointed: number }[];
      if (!row || row.busy !== 0 || row.log !== row.checkpointed) return null;
    } finally {
      reader.close();
    }
    db.pragma("wal_autocheckpoint = 0");
    this.#copying++;
    let released = false;
    const file = this.file;
    const mode = this.#mode;
    const still = () => !released && this.#db === db;
    async function* open(): AsyncGenerator<Buffer> {
      let first = true;
      for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
        if (!still()) break;
        // The journal-mode bytes of the header (offsets 18 and 19): 1 for a rollback journal.
        if (first && mode !== 2 && chunk.length >= 20) chunk.fill(1, 18, 20);
        first = false;
        yield chunk;
      }
      if (!still()) throw new TidemarkError("E_UNAVAILABLE", `the shadow ${file} was closed while the compaction read it; nothing was installed`, { hint: "the next compaction takes it again" });
    }
    return {
      version,
      timestamp,
      open,
      release: () => {
        if (released) return;
        released = true;
        this.#copying--;
        if (this.#db === db) db.pragma("wal_autocheckpoint = 1000");
      },
    };
  }

  /** Commits what is durable, writes the clean marker and closes the connection. */
  close(): void {
    this.#closeConnection(true);
  }

  #run(db: Database.Database, change: ChangeToStore): void {
    const list = change.transaction ?? [];
    for (let i = 0; i < list.length; i++) {
      const st = this.#rewriter.empty ? list[i]! : this.#rewriter.rewrite(list[i]!);
      try {
        if (typeof st === "string") db.exec(st);
        else if (st.params === undefined) db.exec(st.sql);
        else db.prepare(st.sql).run(st.params as never);
      } catch (err) {
        if (isEnvironmentFailure(err)) {
          // The shadow's own file failed (a full disk, say), not the statement: the next change rebuilds it.
          this.#synced = null;
          throw shadowFailure(this.file, "apply a change to", err);
        }
        throw new TidemarkError("E_REPLAY", `change ${change.version}, statement ${i} cannot apply to the backup's state: ${oneLine((err as Error).message)}: ${excerpt(st)}`, {
          hint: "nothing was stored; the host must not commit this transaction: fix the statement (or add a rewrite rule) and send the version again",
          cause: err,
        });
      }
    }
  }

  #reapply(change: ChangeToStore): void {
    const db = this.#connection();
    this.#savepoint(db);
    this.#run(db, change);
    this.#last = change;
    this.#lastTs = change.timestamp;
  }

  /** Opens the savepoint a change is applied in, inside the open transaction (begun if need be). */
  #savepoint(db: Database.Database): void {
    if (!db.inTransaction) db.exec("BEGIN");
    db.exec("SAVEPOINT tidemark_last");
  }

  /** Undoes the change in the savepoint; false when SQLite already rolled the whole transaction back. */
  #undoTrial(db: Database.Database): boolean {
    if (!db.inTransaction) return false;
    db.exec(UNDO_LAST);
    return true;
  }

  /**
   * Settles the last change, if any (another follows it: it joins the open transaction,
   * committed every COMMIT_EVERY), and opens the savepoint the next change is applied in. One
   * exec in the common case: this runs on every ack.
   */
  #settleAndOpen(db: Database.Database): void {
    const inTransaction = db.inTransaction;
    if (this.#last) {
      this.#last = null;
      this.#committedTs = this.#lastTs;
      if (inTransaction) {
        if (++this.#pending < COMMIT_EVERY) {
          db.exec("RELEASE tidemark_last; SAVEPOINT tidemark_last");
        } else {
          db.exec("RELEASE tidemark_last; COMMIT; BEGIN; SAVEPOINT tidemark_last");
          this.#pending = 0;
        }
        return;
      }
    }
    db.exec(inTransaction ? "SAVEPOINT tidemark_last" : "BEGIN; SAVEPOINT tidemark_last");
  }

  /** Commits every settled change, keeping the last one undoable (it is applied again in a new savepoint). */
  #commitSettled(db: Database.Database): void {
    const last = this.#last;
    if (!db.inTransaction) return;
    if (last) db.exec(UNDO_LAST);
    db.exec("COMMIT");
    this.#pending = 0;
    if (last) {
      this.#savepoint(db);
      this.#run(db, last);
    }
  }

  #connection(): Database.Database {
    if (!this.#db) throw new TidemarkError("E_INTERNAL", "the shadow database is not open");
    this.#touch();
    return this.#db;
  }

  #open(): void {
    for (const victim of openShadows.keys()) {
      if (openShadows.size < MAX_OPEN_SHADOWS) break;
      if (victim !== this && !victim.#trial && victim.#copying === 0) victim.#closeConnection(true);
    }
    fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    const db = new Database(this.file);
    fs.chmodSync(this.file, 0o600);
    // A crash from now on leaves no marker: the next open rebuilds.
    fs.rmSync(this.#marker, { force: true });
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    db.pragma(`cache_size = -${CACHE_KIB}`);
    this.#db = db;
    this.#touch();
    if (!exitHooked) {
      exitHooked = true;
      process.once("exit", () => {
        for (const s of [...openShadows.keys()]) s.#closeConnection(true);
      });
    }
  }

  #touch(): void {
    if (mostRecent === this) return;
    openShadows.delete(this);
    openShadows.set(this, true);
    mostRecent = this;
  }

  /** Closes the connection; with `clean`, commits the durable last change and writes the marker. */
  #closeConnection(clean: boolean): void {
    const db = this.#db;
    if (!db) return;
    openShadows.delete(this);
    if (mostRecent === this) mostRecent = null;
    this.#db = null;
    const inTrial = this.#trial !== null;
    try {
      if (inTrial) this.#undoTrial(db);
      if (db.inTransaction) db.exec("COMMIT");
      this.#pending = 0;
      this.#last = null;
      this.#committedTs = this.#lastTs;
      db.close();
    } catch {
      this.#synced = null;
      return;
    }
    if (!clean || inTrial || !this.#synced) {
      this.#synced = null;
      return;
    }
    const marker: Marker = { version: this.#synced.version, prevVersion: this.#synced.prevVersion, mode: this.#mode, ...(this.#lastTs !== undefined && { timestamp: this.#lastTs }) };
    try {
      fs.writeFileSync(this.#marker, JSON.stringify(marker), { mode: 0o600 });
    } catch {
      // No marker (a full disk, say): the next open rebuilds, as after a crash.
      fs.rmSync(this.#marker, { force: true });
    }
  }

  async #rebuild(backend: Backend, to: number): Promise<void> {
    this.#closeConnection(false);
    this.#last = null;
    removeDatabaseFiles(this.file);
    fs.rmSync(this.#marker, { force: true });
    fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    if (to === 0) {
      this.#mode = 1;
      this.#lastTs = this.#committedTs = undefined;
      this.#open();
      return;
    }
    const tmp = `${this.file}.rebuild`;
    removeDatabaseFiles(tmp);
    try {
      const replayed = await replayInto(backend, tmp, { to, rewriter: this.#rewriter });
      await replayed.db.close();
      this.#lastTs = this.#committedTs = replayed.timestamp;
      fs.renameSync(tmp, this.file);
    } catch (err) {
      removeDatabaseFiles(tmp);
      if (isEnvironmentFailure(err)) throw shadowFailure(tmp, "rebuild", err);
      throw new TidemarkError("E_REPLAY", `the backup ${backend.location} cannot be replayed to version ${to} to check changes against it: ${(err as Error).message}`, {
        hint: "the backup holds a change that does not restore (acknowledged before tidemark checked changes): send a fresh snapshot as a new base (tidemark init), or restore an earlier --version",
        cause: err,
      });
    }
    this.#mode = readModeByte(this.file);
    this.#open();
  }
}

/**
 * SQLite result codes (and errnos) that say the shadow's own storage failed, not the change:
 * a full disk, an I/O error, a file that cannot be opened or written.
 */
const ENVIRONMENT_CODE = /^(SQLITE_(FULL|IOERR|CANTOPEN|NOMEM|READONLY|BUSY|LOCKED|CORRUPT|NOTADB|PERM|PROTOCOL)|ENOSPC|EDQUOT|EIO|EROFS|EACCES|EPERM)/;
const ENVIRONMENT_MESSAGE = /database or disk is full|disk I\/O error|unable to open database file|attempt to write a readonly database|ENOSPC|EDQUOT/;

/** Whether `err` (or what caused it: the replay worker wraps its errors) is a failure of the shadow's storage. */
function isEnvironmentFailure(err: unknown): boolean {
  for (let e = err as { code?: unknown; message?: unknown; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if (typeof e.code === "string" && ENVIRONMENT_CODE.test(e.code)) return true;
    if (typeof e.message === "string" && ENVIRONMENT_MESSAGE.test(e.message)) return true;
  }
  return false;
}

/** The error for a shadow whose storage failed: nothing was stored, and the change itself may be fine. */
function shadowFailure(file: string, what: string, err: unknown): BackendError {
  return new BackendError("shadow", what, file, oneLine((err as Error).message), {
    cause: err,
    hint: `free disk space in ${path.dirname(file)} (or point TIDEMARK_SHADOW_DIR elsewhere); nothing was stored, retry the change`,
  });
}

function sameHead(a: BackendHead, b: BackendHead): boolean {
  return a.version === b.version && a.prevVersion === b.prevVersion;
}

function readMarker(file: string): Marker | null {
  try {
    const m = JSON.parse(fs.readFileSync(file, "utf8")) as Marker;
    return Number.isSafeInteger(m.version) ? m : null;
  } catch {
    return null;
  }
}

function readModeByte(file: string): number {
  const buf = Buffer.alloc(1);
  const fd = fs.openSync(file, "r");
  try {
    return fs.readSync(fd, buf, 0, 1, 18) === 1 ? buf[0]! : 1;
  } finally {
    fs.closeSync(fd);
  }
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, " ").trim();
}

function excerpt(st: Statement): string {
  const flat = oneLine(typeof st === "string" ? st : st.sql);
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
}
