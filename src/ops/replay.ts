/**
 * Replays a backup into a new SQLite file: the base snapshot, then every transaction in
 * batched SQLite transactions, rewriting statements on the way (or, for a captured backup,
 * every change's pages, written into the file). Restore and compaction both build on it.
 *
 * Reading and decoding records happens here, on the calling thread; SQLite runs in a worker
 * thread (replay-worker.js), so the two overlap. Batches in flight are bounded, so memory stays
 * bounded however long the backup.
 */
import fsp from "node:fs/promises";
import { Worker } from "node:worker_threads";
import type { Backend } from "../backup/backup.js";
import type { SyncChanges } from "../backup/change-stream.js";
import type { Statement, StoredChange, StoredSnapshot } from "../model/change.js";
import { TidemarkError } from "../util/errors.js";
import type { Rewriter } from "./rewrite.js";
import { PageFile } from "./page-file.js";
import type { ReplaySqlite } from "./replay-sqlite.js";

/** Statements sent to the worker per message (or run at once on the calling thread). */
const BATCH_STATEMENTS = 2048;
/**
 * Replays of at most this many changes run SQLite on the calling thread when the caller allows
 * it: starting a worker (a new isolate that loads better-sqlite3) costs 70-100 ms, more than
 * decoding and running that many changes one after the other.
 */
export const INLINE_CHANGES = 20_000;
/** Messages the worker may have queued before the reader waits. */
const MAX_IN_FLIGHT = 3;
/** Changes between turns given to the event loop (and progress reports). */
const YIELD_EVERY = 256;

/** Options for {@link replayInto}. */
export interface ReplayOptions {
  /** The version to stop at; defaults to the head. */
  readonly to?: number;
  /** Rewrites each statement before it runs. */
  readonly rewriter?: Rewriter;
  /** Called now and then with versions done and versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Stops the replay early; it then rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  /**
   * Whether a short replay (up to {@link INLINE_CHANGES} changes, or a captured backup's) may
   * run SQLite on the calling thread, which it then blocks for a batch of statements at a time.
   * Off by default: a daemon must keep acknowledging changes.
   */
  readonly inline?: boolean;
}

/** A replayed database, still open in its worker. */
export interface Replayed {
  /** The open database; the caller must close it. */
  readonly db: ReplayedDb;
  /** The version the database is now at. */
  readonly version: number;
  /** Timestamp of that change. */
  readonly timestamp: number;
  /** Changes applied, base snapshot included. */
  readonly changes: number;
  /** Statements executed. */
  readonly statements: number;
}

/** What callers may still do with a replayed database. */
export interface ReplayedDb {
  /** The rows of `PRAGMA integrity_check`. */
  integrityCheck(): Promise<string[]>;
  /** Copies the database to `dest` with SQLite's backup API. */
  backup(dest: string): Promise<void>;
  /** Closes the database and stops the worker. */
  close(): Promise<void>;
}

/**
 * Rebuilds the database as of `options.to` into `dbPath`, which must not exist yet. The
 * database is left open, in the journal mode of its snapshot, with every change committed.
 */
export async function replayInto(backend: Backend, dbPath: string, options: ReplayOptions = {}): Promise<Replayed> {
  const head = backend.head();
  const to = options.to ?? head.version;
  if (head.version === 0) {
    throw new TidemarkError("E_RANGE", `${backend.location} is empty: there is nothing to replay`, {
      hint: "ingest changes first, or check the backup location",
    });
  }
  const rewriter = options.rewriter && !options.rewriter.empty ? options.rewriter : undefined;
  // Without the inline choice the worker starts at once, while the first records are read.
  let worker: SqliteClient | undefined = options.inline ? undefined : new SqliteWorker();
  let opened = false;
  let first = 0;
  let version = 0;
  let timestamp = 0;
  let changes = 0;
  let statements = 0;
  let pages: PageFile | undefined;
  let stream: AsyncIterator<StoredChange> | undefined;
  try {
    // Inside the try: a range the backup does not hold throws here, and the worker must go.
    stream = backend.streamChanges({ to })[Symbol.asyncIterator]();
    // The stored backends' stream hands over changes already read without a promise each.
    const takeSync = "takeSync" in stream ? (stream as SyncChanges).takeSync.bind(stream) : undefined;
    for (;;) {
      let change = takeSync?.();
      if (change === undefined) {
        const r = await stream.next();
        if (r.done) break;
        change = r.value;
      }
      if (first === 0) first = change.version;
      // Chosen at the first change (the base), which says how many are to come. A captured
      // backup's pages are written on this thread however many there are, and SQLite only opens
      // and checks the file at the end: a worker's start would cost more than it saves.
      const sqlite = (worker ??= change.captured || to - first < INLINE_CHANGES ? await InlineSqlite.create() : new SqliteWorker());
      if (change.snapshot) {
        if (opened) await sqlite.call({ op: "close" });
        opened = false;
        pages?.close();
        pages = undefined;
        await writeSnapshot(change.snapshot, dbPath);
      }
      if (change.captured) {
        // Captured pages go straight into the file, as a checkpoint writes them; SQLite opens it
        // only at the end.
        pages ??= new PageFile(dbPath);
        pages.apply(change.captured, change.version);
      } else if (!opened) {
        sqlite.send({ op: "open", file: dbPath });
        opened = true;
      }
      const list = change.transaction;
      if (list) {
        for (let i = 0; i < list.length; i++) {
          const wait = sqlite.statement(rewriter ? rewriter.rewrite(list[i]!) : list[i]!, change.version, i);
          if (wait) await wait;
        }
        statements += list.length;
      }
      version = change.version;
      timestamp = change.timestamp;
      changes++;
      if (changes % YIELD_EVERY === 0) {
        options.signal?.throwIfAborted();
        // Decoding is CPU work on the caller's thread: give its event loop a turn now and then,
        // so that a daemon keeps acknowledging changes during a long replay.
        await new Promise((resolve) => setImmediate(resolve));
      }
      if (options.onProgress && (changes % YIELD_EVERY === 0 || version === to)) options.onProgress(version - first + 1, to - first + 1);
    }
    stream = undefined; // read to its end
    if (pages) {
      pages.close();
      pages = undefined;
      // Opened as it is: a captured backup's file is left byte for byte as its pages made it.
      worker?.send({ op: "open", file: dbPath, asIs: true });
      opened = true;
    }
    if (version !== to || !opened || !worker) {
      throw new TidemarkError("E_RESTORE", `replay of ${backend.location} stopped at version ${version}, before ${to}`, {
        hint: "the backup changed while it was read (a compaction or rewind); run the command again",
      });
    }
    await worker.flush();
    await worker.call({ op: "finish" });
    return { db: worker, version, timestamp, changes, statements };
  } catch (err) {
    // As a for-await loop left early would: the stream lets its reader go.
    await stream?.return?.().catch(() => {});
    pages?.close();
    await worker?.close();
    throw err;
  }
}

/**
 * Writes a snapshot's bytes into a new file at `dbPath`. Each frame is written before the next
 * is read, so the decoder may hand every frame over in one reused buffer.
 */
async function writeSnapshot(snapshot: StoredSnapshot, dbPath: string): Promise<void> {
  const fh = await fsp.open(dbPath, "w");
  try {
    let position = 0;
    for await (const buf of snapshot.open({ reuse: true })) {
      for (let done = 0; done < buf.length; ) done += (await fh.write(buf, done, buf.length - done, position + done)).bytesWritten;
      position += buf.length;
    }
  } finally {
    await fh.close();
  }
}

/** Where each statement of a batch came from: its version and its index in that change. */
interface Origins {
  readonly versions: number[];
  readonly indexes: number[];
}

/** A batch of statements to send to the worker, with where each came from. */
interface Batch extends Origins {
  readonly statements: Statement[];
}

/**
 * A failure the SQLite side reports: for a statement, its index in the batch (`at`) and its
 * SQL, so that a batch sent is not kept (its strings would outlive young-generation GC).
 */
interface SqliteFailure {
  readonly message: string;
  readonly at?: number;
  readonly sql?: string;
}

interface Pending {
  resolve(result: unknown): void;
  reject(err: Error): void;
  /** For "run" messages: where the batch's statements came from, to name a failing one. */
  origins?: Origins;
}

/** What the replay asks of the SQLite side, in a worker or on the calling thread. */
interface SqliteClient extends ReplayedDb {
  /** Sends a message; the promise settles with its answer (a failure also fails the next call). */
  send(msg: Record<string, unknown>): Promise<unknown>;
  /** Queues one statement; returns a promise only when the caller must wait before the next. */
  statement(st: Statement, version: number, index: number): Promise<void> | undefined;
  /** Runs what is queued, waits for everything sent, then sends `msg` and waits for it. */
  call(msg: Record<string, unknown>): Promise<unknown>;
  /** Runs what is queued and waits for every answer. */
  flush(): Promise<void>;
}

const newBatch = (): Batch => ({ statements: [], versions: [], indexes: [] });

/** Adds a statement to `b`; true once the batch is full. */
function queue(b: Batch, st: Statement, version: number, index: number): boolean {
  b.statements.push(st);
  b.versions.push(version);
  b.indexes.push(index);
  return b.statements.length >= BATCH_STATEMENTS;
}

/** The calls both ways of running SQLite answer alike, through their call(). */
abstract class SqliteCalls {
  abstract call(msg: Record<string, unknown>): Promise<unknown>;

  async integrityCheck(): Promise<string[]> {
    const rows = (await this.call({ op: "integrity" })) as { integrity_check: string }[];
    return rows.map((r) => r.integrity_check);
  }

  async backup(dest: string): Promise<void> {
    await this.call({ op: "backup", dest });
  }
}

/**
 * SQLite on the calling thread (replay-sqlite.js run in process), for short replays: the same
 * statements in the same batches as the worker runs them, and the same errors.
 */
class InlineSqlite extends SqliteCalls implements SqliteClient {
  readonly #sqlite: ReplaySqlite;
  #batch: Batch = newBatch();
  #failure: Error | null = null;

  private constructor(sqlite: ReplaySqlite) {
    super();
    this.#sqlite = sqlite;
  }

  /** Loads replay-sqlite.js (and better-sqlite3) on the calling thread. */
  static async create(): Promise<InlineSqlite> {
    const { ReplaySqlite } = await import("./replay-sqlite.js");
    return new InlineSqlite(new ReplaySqlite());
  }

  send(msg: Record<string, unknown>): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    try {
      const result = this.#sqlite.handle(msg as { op: string });
      return result instanceof Promise ? result.catch((err: unknown) => Promise.reject(this.#fail(err, undefined))) : Promise.resolve(result);
    } catch (err) {
      const failed = Promise.reject(this.#fail(err, undefined));
      // As with the worker, the failure surfaces where the answer is awaited, or in the next call.
      failed.catch(() => {});
      return failed;
    }
  }

  #fail(err: unknown, origins: Origins | undefined): Error {
    const e = err as { message?: unknown; at?: number; sql?: string } | undefined;
    this.#failure ??= errorOf({ message: String(e?.message ?? err), ...(e?.at !== undefined && { at: e.at }), ...(e?.sql !== undefined && { sql: e.sql }) }, origins);
    return this.#failure;
  }

  statement(st: Statement, version: number, index: number): Promise<void> | undefined {
    if (!queue(this.#batch, st, version, index)) return undefined;
    return this.#runBatch();
  }

  /** Runs the queued statements now; a promise only when they failed. */
  #runBatch(): Promise<void> | undefined {
    const b = this.#batch;
    if (this.#failure) return Promise.reject(this.#failure);
    if (b.statements.length === 0) return undefined;
    this.#batch = newBatch();
    try {
      this.#sqlite.run(b.statements);
      return undefined;
    } catch (err) {
      return Promise.reject(this.#fail(err, b));
    }
  }

  async call(msg: Record<string, unknown>): Promise<unknown> {
    await this.flush();
    return this.send(msg);
  }

  async flush(): Promise<void> {
    await this.#runBatch();
  }

  async close(): Promise<void> {
    this.#batch = newBatch();
    // As the worker's close: a failure to close must not hide the error that led here.
    try {
      this.#sqlite.close();
    } catch {}
  }
}

/** The client side of replay-worker.js. */
class SqliteWorker extends SqliteCalls implements SqliteClient {
  readonly #worker = new Worker(new URL("./replay-worker.js", import.meta.url));
  readonly #pending = new Map<number, Pending>();
  readonly #inFlight: Promise<unknown>[] = [];
  #nextId = 0;
  #batch: Batch = newBatch();
  #failure: Error | null = null;
  #closed = false;

  constructor() {
    super();
    this.#worker.on("message", (msg: { id: number; ok: boolean; result?: unknown; error?: SqliteFailure }) => {
      const p = this.#pending.get(msg.id);
      if (!p) return;
      this.#pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(errorOf(msg.error!, p.origins));
    });
    this.#worker.on("error", (err) => this.#failAll(err));
    this.#worker.on("exit", (code) => {
      if (!this.#closed) this.#failAll(new Error(`replay worker exited with code ${code}`));
    });
  }

  #failAll(err: Error): void {
    this.#failure ??= err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  /** Sends a message and returns a promise for its reply. */
  send(msg: Record<string, unknown>, origins?: Origins): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = ++this.#nextId;
    const reply = new Promise<unknown>((resolve, reject) => this.#pending.set(id, { resolve, reject, ...(origins && { origins }) }));
    this.#worker.postMessage({ ...msg, id });
    // A failure surfaces where the reply is awaited: in drain(), or in the next call.
    reply.catch(() => {});
    this.#inFlight.push(reply);
    return reply;
  }

  /**
   * Queues one statement and sends a batch when it is full. Returns a promise only when the
   * caller must wait for the worker to catch up; most statements cost no promise at all.
   */
  statement(st: Statement, version: number, index: number): Promise<void> | undefined {
    if (!queue(this.#batch, st, version, index)) return undefined;
    this.#sendBatch();
    return this.#inFlight.length > MAX_IN_FLIGHT ? this.#waitBelow(MAX_IN_FLIGHT) : undefined;
  }

  async #waitBelow(n: number): Promise<void> {
    while (this.#inFlight.length > n) await this.#inFlight.shift();
  }

  #sendBatch(): void {
    const b = this.#batch;
    if (b.statements.length === 0) return;
    this.#batch = newBatch();
    // Only the origins are kept until the answer: the statements are copied into the message.
    this.send({ op: "run", statements: b.statements }, { versions: b.versions, indexes: b.indexes });
  }

  /** Flushes queued statements, waits for everything sent, then sends `msg` and waits for it. */
  async call(msg: Record<string, unknown>): Promise<unknown> {
    await this.flush();
    return this.send(msg);
  }

  /** Sends what is queued and waits for every reply. */
  async flush(): Promise<void> {
    this.#sendBatch();
    await this.drain();
  }

  /** Waits for every reply so far. */
  drain(): Promise<void> {
    return this.#waitBelow(0);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.#failure) {
        this.#batch = newBatch();
        await this.drain().catch(() => {});
        await this.send({ op: "close" }).catch(() => {});
      }
    } finally {
      this.#closed = true;
      await this.#worker.terminate();
    }
  }
}

/** Turns a worker's error into E_RESTORE, naming the version and statement when it was a batch. */
function errorOf(error: SqliteFailure, origins: Origins | undefined): TidemarkError {
  const at = error.at;
  if (!origins || at === undefined || error.sql === undefined || origins.versions[at] === undefined) {
    return new TidemarkError("E_RESTORE", `replay failed: ${error.message}`);
  }
  return new TidemarkError(
    "E_RESTORE",
    `replaying version ${origins.versions[at]}, statement ${origins.indexes[at]} failed: ${error.message}: ${excerpt(error.sql)}`,
    { hint: "if this statement is known to be bad, rewrite it with --rules (see README, Statement rewriting)" },
  );
}

function excerpt(sql: string): string {
  const flat = sql.replace(/\s+/g, " ").trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
}
