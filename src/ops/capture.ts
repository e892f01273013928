/**
 * Capture: backs up a WAL-mode SQLite database that any program writes, without its help,
 * by storing each committed WAL transaction as a change of pages (`tidemark watch`).
 *
 * How no frame is missed (the approach of Litestream's db.go, our own code):
 * - The capture holds a read transaction on its own connection at all times but one. A WAL
 *   only restarts (overwriting its frames from the start) when every frame has been copied
 *   into the database and no reader uses the WAL; a reader holding a snapshot in the WAL
 *   forbids that, and one reading the database file alone forbids copying anything new into
 *   it. So while the read transaction is held, the WAL can restart at most once, and only
 *   before anything is appended to it after the read began.
 * - The one moment it lets go is its own checkpoint: it takes the write lock on a second
 *   connection (BEGIN IMMEDIATE, so no commit can slip in), stores every commit left in the
 *   WAL, ends its read, runs a PASSIVE checkpoint, begins its read again and only then gives
 *   the write lock back. The application's next write restarts the WAL, and the capture, which
 *   has stored everything before, follows the new salts from the first frame. An application's
 *   own TRUNCATE or RESTART checkpoint can only succeed in that state too.
 * - Its connections never write and have auto-checkpointing off.
 * - On start it continues from the WAL position the backup's head change recorded, if that
 *   frame is still in the WAL with the same salts and checksum; otherwise (the WAL restarted
 *   while nothing held it) it takes a fresh snapshot, and says so in the log.
 */
import fs from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import type { Backend } from "../backup/backup.js";
import type { CapturedPage, WalPosition } from "../model/change.js";
import { InputError, TidemarkError } from "../util/errors.js";
import { silentLogger, type Logger } from "../util/logger.js";
import { WAL_FRAME_HEADER_SIZE, sameCycle, startOf, WalFile, type WalHeader, type WalTransaction } from "./wal-reader.js";
import { NO_WAL, WalChangedError, walSnapshot } from "./wal-snapshot.js";

/** Options for {@link Capture}. */
export interface CaptureOptions {
  readonly log?: Logger;
  /** How often the WAL is read, in ms (100). */
  readonly pollMs?: number;
  /** Checkpoint once the WAL holds this many frames (1000, SQLite's own default). */
  readonly checkpointFrames?: number;
  /** ... or once this long has passed since the last checkpoint with frames in the WAL (60 s). */
  readonly checkpointMs?: number;
  /** How long to wait for the application's write lock, in ms (5000). */
  readonly busyTimeoutMs?: number;
  /** Called after each change is stored (the daemon feeds its replicas and scheduler). */
  readonly onStored?: () => void;
}

/** What a running capture reports. */
export interface CaptureStatus {
  /** The database captured. */
  readonly db: string;
  /** The backup's head: the last captured version. */
  readonly head: number;
  /** WAL transactions stored since the capture started. */
  readonly transactions: number;
  /** Bytes of the WAL frames (headers and pages) those transactions took in the WAL. */
  readonly walFrameBytes: number;
  /** Fresh snapshots taken since the capture started (1 when it could not continue). */
  readonly snapshots: number;
  /** Committed transactions in the WAL not stored yet, as of the last poll. */
  readonly lagTransactions: number;
  /** How long the oldest of them has waited, in seconds (0 when there are none). */
  readonly lagSeconds: number;
  /** The WAL file's size in bytes. */
  readonly walBytes: number;
  /** When the capture last checkpointed (ms since the epoch), if it has. */
  readonly lastCheckpoint?: number;
}

/** Captures one database into one backup; see the module comment. */
export class Capture {
  readonly db: string;
  readonly #backend: Backend;
  readonly #log: Logger;
  readonly #pollMs: number;
  readonly #checkpointFrames: number;
  readonly #checkpointMs: number;
  readonly #busyTimeoutMs: number;
  readonly #onStored: () => void;
  readonly #wal: WalFile;
  #reader: Database.Database | null = null;
  /**
   * The database file, read for snapshots through this one descriptor, closed only after the
   * connections: closing a descriptor of it would drop their POSIX locks, and with them the
   * shared lock that keeps the application's last close from deleting the WAL.
   */
  #dbFd: number | null = null;
  #writer: Database.Database | null = null;
  /** Where the capture stands in the WAL; null before any WAL cycle was seen. */
  #pos: WalPosition | null = null;
  #transactions = 0;
  #walFrameBytes = 0;
  #snapshots = 0;
  #lastCheckpoint = Date.now();
  #checkpointed: number | undefined;
  /** When the capture first saw commits it has not stored yet. */
  #pendingSince: number | null = null;
  #pendingCount = 0;

  constructor(db: string, backend: Backend, options: CaptureOptions = {}) {
    this.db = db;
    this.#backend = backend;
    this.#log = (options.log ?? silentLogger).child({ component: "capture", db });
    this.#pollMs = options.pollMs ?? 100;
    this.#checkpointFrames = options.checkpointFrames ?? 1000;
    this.#checkpointMs = options.checkpointMs ?? 60_000;
    this.#busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    this.#onStored = options.onStored ?? (() => {});
    this.#wal = new WalFile(`${db}-wal`);
  }

  /** Opens the database, then continues from the backup's head or takes a fresh snapshot. */
  async open(): Promise<void> {
    let why: string | null;
    try {
      this.#reader = connect(this.db, this.#busyTimeoutMs);
      this.#dbFd = fs.openSync(this.db, "r");
      this.#writer = connect(this.db, this.#busyTimeoutMs);
      this.#beginRead();
      why = await this.#resume();
      if (why) await this.#snapshot(why);
    } catch (err) {
      this.#release();
      throw err;
    }
    this.#log.info({ version: this.#backend.head().version }, why ? "capturing from a fresh snapshot" : "continuing from the backup's head without a gap");
  }

  #beginRead(): void {
    const r = this.#reader!;
    if (r.inTransaction) return;
    r.exec("BEGIN");
    // A deferred BEGIN takes its snapshot at the first read.
    r.prepare("SELECT count(*) FROM sqlite_master").pluck().get();
  }

  #endRead(): void {
    if (this.#reader?.inTransaction) this.#reader.exec("COMMIT");
  }

  /** Runs `fn` holding the database's write lock, on the capture's second connection. */
  async #locked<T>(fn: () => Promise<T>): Promise<T> {
    this.#writer!.exec("BEGIN IMMEDIATE");
    try {
      return await fn();
    } finally {
      this.#writer!.exec("ROLLBACK");
    }
  }

  /** Continues from the backup's head when the WAL still holds its position; else says why not. */
  async #resume(): Promise<string | null> {
    if (this.#backend.head().version === 0) return "the backup is empty";
    const pos = await headPosition(this.#backend);
    if (!pos) return "the backup's head records no WAL position (it was compacted to its head, or copied)";
    return this.#locked(async () => {
      const header = this.#wal.header();
      if (!header || !this.#wal.holds(header, pos)) return "the WAL no longer holds the position the backup's head recorded (it was checkpointed and restarted while nothing captured it)";
      this.#pos = pos;
      await this.#catchUp();
      // From here on, every commit before the read transaction is stored.
      this.#endRead();
      this.#beginRead();
      return null;
    });
  }

  /** Stores a fresh snapshot as the next version; the read transaction is held. */
  async #snapshot(why: string): Promise<void> {
    if (this.#backend.head().version === 0) this.#log.info({}, "the backup is empty: taking its first snapshot");
    else this.#log.warn({ reason: why }, `continuity with the backup is lost: taking a fresh snapshot (${why})`);
    for (let attempt = 1; ; attempt++) {
      const snap = walSnapshot(this.#dbFd!, this.#wal);
      try {
        await this.#backend.addChange({
          version: this.#backend.head().version + 1,
          timestamp: Date.now(),
          snapshot: snap.source,
          captured: { pageSize: snap.pageSize, dbPages: snap.dbPages, transactions: 0, wal: snap.position ?? NO_WAL, pages: [] },
        });
        this.#pos = snap.position;
        this.#snapshots++;
        this.#onStored();
        return;
      } catch (err) {
        if (!(err instanceof WalChangedError || (err as Error).cause instanceof WalChangedError) || attempt >= 3) throw err;
        this.#log.info({ attempt }, "the WAL restarted while the snapshot was read: taking it again");
      }
    }
  }

  /** Stores every committed transaction the WAL holds after the capture's position. */
  async #catchUp(): Promise<void> {
    for (;;) {
      const header = this.#wal.header();
      if (!header) return;
      this.#follow(header);
      const txns = this.#wal.transactions(header, this.#pos!);
      if (txns.length === 0) {
        this.#pendingSince = null;
        this.#pendingCount = 0;
        return;
      }
      this.#pendingSince ??= Date.now();
      this.#pendingCount = txns.length;
      await this.#store(txns, header);
      this.#pendingSince = null;
    }
  }

  /** Moves to a new WAL cycle when the salts changed: see the module comment for why nothing is lost. */
  #follow(header: WalHeader): void {
    if (this.#pos && sameCycle(header, this.#pos)) return;
    if (this.#pos && this.#pos !== NO_WAL) this.#log.info({ salt1: header.salt1, checkpointSeq: header.checkpointSeq }, "the WAL restarted (new salts): following it from its first frame");
    this.#pos = startOf(header);
  }

  /** Stores transactions as one change: the last copy of each page, cut to the final size. */
  async #store(txns: WalTransaction[], header: WalHeader): Promise<void> {
    const last = txns.at(-1)!;
    const pages = new Map<number, Buffer>();
    for (const t of txns) for (const [pgno, data] of t.pages) pages.set(pgno, data);
    const list: CapturedPage[] = [];
    for (const [pgno, data] of [...pages].sort((a, b) => a[0] - b[0])) if (pgno <= last.dbPages) list.push({ pgno, data });
    const version = this.#backend.head().version + 1;
    await this.#backend.addChange({
      version,
      timestamp: Date.now(),
      captured: { pageSize: header.pageSize, dbPages: last.dbPages, transactions: txns.length, wal: last.end, pages: list },
    });
    this.#pos = last.end;
    this.#transactions += txns.length;
    for (const t of txns) this.#walFrameBytes += t.frames * (WAL_FRAME_HEADER_SIZE + header.pageSize);
    this.#onStored();
    this.#log.debug({ version, transactions: txns.length, pages: list.length }, "captured");
  }

  /** Reads the WAL once: stores what is committed, and checkpoints when it is time. */
  async poll(): Promise<void> {
    await this.#catchUp();
    const frames = this.#pos?.frame ?? 0;
    const now = Date.now();
    if (frames >= this.#checkpointFrames || (frames > 0 && now - this.#lastCheckpoint >= this.#checkpointMs)) await this.checkpoint();
  }

  /** Checkpoints the WAL under the write lock, so that it restarts with nothing left unstored. */
  async checkpoint(): Promise<void> {
    this.#lastCheckpoint = Date.now();
    try {
      this.#writer!.exec("BEGIN IMMEDIATE");
    } catch (err) {
      if ((err as { code?: string }).code?.startsWith("SQLITE_BUSY")) {
        this.#log.debug({}, "the application held its write lock: checkpointing later");
        return;
      }
      throw err;
    }
    try {
      await this.#catchUp();
      this.#endRead();
      try {
        const [row] = this.#reader!.pragma("wal_checkpoint(PASSIVE)") as { busy: number; log: number; checkpointed: number }[];
        this.#checkpointed = Date.now();
        this.#log.debug({ ...row }, "checkpointed");
      } finally {
        this.#beginRead();
      }
    } finally {
      this.#writer!.exec("ROLLBACK");
    }
  }

  /**
   * Polls until `signal` aborts, then stores what is left and closes. A failed poll (the
   * backend unreachable, say) is logged and retried after a second: nothing was stored, and the
   * held read transaction keeps every frame until it is.
   */
  async run(signal: AbortSignal): Promise<void> {
    try {
      while (!signal.aborted) {
        let wait = this.#pollMs;
        try {
          await this.poll();
        } catch (err) {
          this.#log.error({ err }, `capture failed, retrying in a second: ${(err as Error).message}`);
          wait = 1000;
        }
        await sleep(wait, undefined, { signal }).catch(() => {});
      }
    } finally {
      await this.close();
    }
  }

  status(): CaptureStatus {
    return {
      db: this.db,
      head: this.#backend.head().version,
      transactions: this.#transactions,
      walFrameBytes: this.#walFrameBytes,
      snapshots: this.#snapshots,
      lagTransactions: this.#pendingSince === null ? 0 : this.#pendingCount,
      lagSeconds: this.#pendingSince === null ? 0 : (Date.now() - this.#pendingSince) / 1000,
      walBytes: this.#wal.size(),
      ...(this.#checkpointed !== undefined && { lastCheckpoint: this.#checkpointed }),
    };
  }

  /** Stores what is committed (under the write lock, briefly), then closes the connections. Safe to call twice. */
  async close(): Promise<void> {
    if (!this.#reader) return;
    try {
      if (this.#writer) await this.#locked(() => this.#catchUp()).catch((err: unknown) => this.#log.warn({ err }, "could not store the last commits before closing"));
    } finally {
      this.#release();
    }
  }

  #release(): void {
    if (this.#reader?.open && this.#reader.inTransaction) this.#reader.exec("COMMIT");
    if (this.#writer?.open && this.#writer.inTransaction) this.#writer.exec("ROLLBACK");
    this.#writer?.close();
    this.#reader?.close();
    this.#writer = null;
    this.#reader = null;
    if (this.#dbFd !== null) fs.closeSync(this.#dbFd);
    this.#dbFd = null;
    this.#wal.close();
  }
}

/**
 * Checks that `db` is a database tidemark watch can capture (it exists, is SQLite, is in WAL
 * mode), before anything is created for it. Throws E_INPUT or E_MODE with a hint.
 */
export function checkCapturable(db: string): void {
  connect(db, 0).close();
}

/** Opens a connection of the capture's: checked to be WAL mode, auto-checkpointing off. */
function connect(db: string, busyTimeoutMs: number): Database.Database {
  if (!fs.existsSync(db)) throw new InputError(`${db}: no such database`, { hint: "start the application first, so that it creates its database, or check the path" });
  let conn: Database.Database;
  let mode: string;
  try {
    conn = new Database(db, { fileMustExist: true, timeout: busyTimeoutMs });
    mode = String(conn.pragma("journal_mode", { simple: true }));
  } catch (err) {
    throw new InputError(`${db}: not a readable SQLite database: ${(err as Error).message}`, { cause: err });
  }
  if (mode !== "wal") {
    conn.close();
    throw new TidemarkError("E_MODE", `${db} is in ${mode} journal mode: tidemark watch captures WAL-mode databases only`, {
      hint: `switch it to WAL once, while the application is stopped: sqlite3 ${db} 'PRAGMA journal_mode=WAL' (the setting persists); or have the host report its transactions (tidemark init)`,
    });
  }
  // Never checkpoint on our own commits (there are none) behind the capture's back.
  conn.pragma("wal_autocheckpoint = 0");
  return conn;
}


/** The WAL position the backup's head change recorded, if it is a captured change. */
export async function headPosition(backend: Backend): Promise<WalPosition | null> {
  const head = backend.head().version;
  let pos: WalPosition | null = null;
  for await (const change of backend.streamChanges({ from: head, to: head })) {
    if (change.version === head) pos = change.captured?.wal ?? null;
  }
  return pos && pos !== NO_WAL && !(pos.salt1 === 0 && pos.salt2 === 0 && pos.checksum1 === 0) ? pos : null;
}

/**
 * How far a capture is behind `db`'s WAL, from the position its backup's head recorded:
 * committed transactions after it (null when the WAL no longer holds the position) and the
 * WAL's size. For `tidemark status --watch`.
 */
export function walLag(db: string, pos: WalPosition | null): { transactions: number | null; walBytes: number } {
  const wal = new WalFile(`${db}-wal`);
  try {
    const header = wal.header();
    const walBytes = wal.size();
    if (!header) return { transactions: 0, walBytes };
    let from: WalPosition;
    if (pos && wal.holds(header, pos)) from = pos;
    else if (pos && sameCycle(header, pos)) return { transactions: null, walBytes };
    else from = startOf(header);
    let n = 0;
    for (const f of wal.frames(header, from, wal.committedFrames(header) ?? 0)) if (f.commit !== 0) n++;
    return { transactions: n, walBytes };
  } finally {
    wal.close();
  }
}
