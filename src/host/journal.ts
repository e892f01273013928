/**
 * A Journal wraps a better-sqlite3 database so that every transaction the host makes is made
 * durable by tidemark before it commits.
 *
 * A transaction goes: BEGIN IMMEDIATE; run the host's statements, recording them with their
 * parameters; bump the data version in the `_tidemark` table; send the change and wait for the
 * durable ack; COMMIT. If the sink fails, ROLLBACK and throw: the host's database never gets
 * ahead of its backup.
 *
 * ```ts
 * const journal = await Journal.open(db, connect({ socket: "./tidemark.sock" }));
 * await journal.transaction((tx) => {
 *   tx.run("INSERT INTO notes (body) VALUES (?)", "hello");
 * });
 * ```
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type Database from "better-sqlite3";
import type { BackendHead, SyncBackend } from "../backup/backup.js";
import type { ChangeInput, Param, Params, Statement } from "../model/change.js";
import { checkDeterministic } from "../model/determinism.js";
import { InputError, TidemarkError } from "../util/errors.js";
import { applyChange, applyChangeSync, rewindChange, rewindChangeSync } from "../ops/ingest.js";
import { Mutex } from "../util/mutex.js";
import type { Backend } from "../backup/backup.js";
import { reconcile } from "../model/version-rules.js";

/** The table in the host database that holds its data version. */
export const VERSION_TABLE = "_tidemark";

/** Where a Journal sends its changes: the daemon client, or an in-process backend via {@link backendSink}. */
export interface ChangeSink {
  head(): Promise<BackendHead>;
  addChange(change: ChangeInput): Promise<unknown>;
  /** Sends a snapshot of the host database as a new base (only needed to seed an empty backup). */
  addSnapshot(version: number, file: string): Promise<unknown>;
  rewind(): Promise<unknown>;
}

/** A sink that can also work synchronously: an in-process file backend. */
export interface SyncChangeSink {
  headSync(): BackendHead;
  addChangeSync(change: ChangeInput): void;
  rewindSync(): void;
}

/** Adapts an open backend into a sink (and a synchronous one when the backend can). */
export function backendSink(backend: Backend, options: { readonly allowNondeterministic?: boolean } = {}): ChangeSink & Partial<SyncChangeSink> {
  const ingest = { allowNondeterministic: options.allowNondeterministic === true };
  const sink: ChangeSink & Partial<SyncChangeSink> = {
    head: async () => backend.head(),
    addChange: (change) => applyChange(backend, change, ingest),
    addSnapshot: (version, file) => applyChange(backend, { version, snapshot: fs.createReadStream(file) }),
    rewind: () => rewindChange(backend),
  };
  const sync = backend as Partial<SyncBackend>;
  if (typeof sync.addChangeSync === "function" && typeof sync.rewindSync === "function") {
    const b = backend as SyncBackend;
    sink.headSync = () => b.head();
    sink.addChangeSync = (change) => void applyChangeSync(b, change, ingest);
    sink.rewindSync = () => rewindChangeSync(b);
  }
  return sink;
}

/** What a transaction callback may do. Writes are recorded; reads are not. */
export interface JournalTransaction {
  /** Runs a statement that writes, with parameters as better-sqlite3 takes them. */
  run(sql: string, ...params: unknown[]): Database.RunResult;
  /** Runs SQL text that writes (one or more statements, no parameters). */
  exec(sql: string): void;
  /** Reads one row; not recorded. */
  get<T = unknown>(sql: string, ...params: unknown[]): T | undefined;
  /** Reads all rows; not recorded. */
  all<T = unknown>(sql: string, ...params: unknown[]): T[];
}

/** Options for a Journal. */
export interface JournalOptions {
  /** Where the seeding snapshot is written before it is sent; the OS temp directory by default. */
  readonly tmpDir?: string;
  /**
   * Let statements read the clock or random numbers (`random()`, `datetime('now')`, …), which
   * replay to different values; refused with E_NONDETERMINISTIC by default. A sink made by
   * {@link backendSink} must be given the same option; a daemon decides by its own config.
   */
  readonly allowNondeterministic?: boolean;
}

/** A better-sqlite3 database whose transactions are backed up before they commit. */
export class Journal {
  readonly #db: Database.Database;
  readonly #sink: ChangeSink | null;
  readonly #syncSink: SyncChangeSink | null;
  readonly #mutex = new Mutex();
  readonly #cache = new Map<string, Database.Statement>();
  #version: number;
  #busy = false;

  readonly #checkSql: (sql: string) => void;

  private constructor(db: Database.Database, sink: ChangeSink | null, syncSink: SyncChangeSink | null, version: number, options: JournalOptions) {
    this.#db = db;
    this.#sink = sink;
    this.#syncSink = syncSink;
    this.#version = version;
    this.#checkSql = options.allowNondeterministic ? () => {} : checkDeterministic;
  }

  /** The host database's data version: the version of its last committed transaction. */
  get version(): number {
    return this.#version;
  }

  /**
   * Opens a Journal with an asynchronous sink and reconciles versions (DESIGN.md): equal,
   * carry on; the backup one ahead (the host died between the ack and its commit), rewind it;
   * anything else throws GapError or StaleError. An empty backup is seeded with a snapshot.
   */
  static async open(db: Database.Database, sink: ChangeSink, options: JournalOptions = {}): Promise<Journal> {
    const host = hostVersion(db);
    let head = await sink.head();
    if (diedBeforeFirstCommit(db, host, head)) {
      await sink.rewind();
      head = await sink.head();
    }
    if (head.version === 0) {
      const version = host.hasTable ? host.version : 0;
      if (version === 0 && !hasUserTables(db)) {
        const j = new Journal(db, sink, null, 0, options);
        await j.transaction(() => undefined, { force: true });
        return j;
      }
      // An existing database and an empty backup: the backup starts from a snapshot of it.
      const seeded = Math.max(version, 1);
      setVersion(db, seeded);
      await seed(db, sink, seeded, options.tmpDir ?? os.tmpdir());
      return new Journal(db, sink, null, seeded, options);
    }
    if (!host.hasTable) throw notJournaled(head.version);
    if (reconcile(host.version, head) === "rewind") await sink.rewind();
    return new Journal(db, sink, null, host.version, options);
  }

  /**
   * Opens a Journal with a synchronous sink (an in-process file backend, via backendSink).
   * It reconciles like open(); an existing database with an empty backup must be seeded once
   * with open() first.
   */
  static openSync(db: Database.Database, sink: SyncChangeSink, options: JournalOptions = {}): Journal {
    const host = hostVersion(db);
    let head = sink.headSync();
    if (diedBeforeFirstCommit(db, host, head)) {
      sink.rewindSync();
      head = sink.headSync();
    }
    if (head.version === 0) {
      if ((host.hasTable && host.version > 0) || hasUserTables(db)) {
        throw new TidemarkError("E_GAP", "the backup is empty but the host database is not", {
          hint: "seed the backup once with the asynchronous Journal.open(), which sends a snapshot",
        });
      }
      const j = new Journal(db, null, sink, 0, options);
      j.transactionSync(() => undefined, { force: true });
      return j;
    }
    if (!host.hasTable) throw notJournaled(head.version);
    if (reconcile(host.version, head) === "rewind") sink.rewindSync();
    return new Journal(db, null, sink, host.version, options);
  }

  /**
   * Runs `fn` in a transaction that commits only once its change is durable. Resolves with
   * what `fn` returned. Transactions run one at a time.
   */
  transaction<T>(fn: (tx: JournalTransaction) => T, options: { force?: boolean } = {}): Promise<T> {
    const sink = this.#sink;
    if (!sink) return Promise.reject(new TidemarkError("E_USAGE", "this Journal was opened with openSync(); use transactionSync()"));
    return this.#mutex.run(async () => {
      const { result, change } = this.#begin(fn, options.force ?? false);
      if (!change) return result;
      try {
        await sink.addChange(change);
      } catch (err) {
        this.#rollback();
        throw err;
      }
      this.#commit(change.version);
      return result;
    });
  }

  /** transaction() for a synchronous sink: returns once the change is durable and committed. */
  transactionSync<T>(fn: (tx: JournalTransaction) => T, options: { force?: boolean } = {}): T {
    const sink = this.#syncSink;
    if (!sink) throw new TidemarkError("E_USAGE", "this Journal was opened with open(); use transaction()");
    const { result, change } = this.#begin(fn, options.force ?? false);
    if (!change) return result;
    try {
      sink.addChangeSync(change);
    } catch (err) {
      this.#rollback();
      throw err;
    }
    this.#commit(change.version);
    return result;
  }

  /** Runs the host's statements inside BEGIN IMMEDIATE and returns the change to send (none if nothing was written). */
  #begin<T>(fn: (tx: JournalTransaction) => T, force: boolean): { result: T; change: ChangeInput | null } {
    if (this.#busy) throw new TidemarkError("E_USAGE", "transactions cannot nest");
    const db = this.#db;
    const recorded: Statement[] = [];
    db.exec("BEGIN IMMEDIATE");
    this.#busy = true;
    let result: T;
    try {
      result = fn(this.#recorder(recorded));
      if (result instanceof Promise) throw new TidemarkError("E_USAGE", "a Journal transaction callback must be synchronous");
    } catch (err) {
      this.#rollback();
      throw err;
    }
    if (recorded.length === 0 && !force) {
      db.exec("COMMIT");
      this.#busy = false;
      return { result, change: null };
    }
    const version = this.#version + 1;
    const bump = this.#version === 0 ? createVersionTable(version) : [`UPDATE ${VERSION_TABLE} SET version = ${version} WHERE id = 1`];
    try {
      for (const sql of bump) db.exec(sql);
    } catch (err) {
      this.#rollback();
      throw err;
    }
    return { result, change: { version, transaction: [...recorded, ...bump] } };
  }

  #recorder(recorded: Statement[]): JournalTransaction {
    const db = this.#db;
    const prepare = (sql: string) => {
      let st = this.#cache.get(sql);
      if (!st) {
        if (this.#cache.size > 256) this.#cache.clear();
        st = db.prepare(sql);
        this.#cache.set(sql, st);
      }
      return st;
    };
    return {
      run: (sql, ...args) => {
        this.#checkSql(sql);
        const params = normaliseParams(args);
        const st = prepare(sql);
        const r = params === undefined ? st.run() : st.run(params as never);
        recorded.push(params === undefined ? sql : { sql, params });
        return r;
      },
      exec: (sql) => {
        this.#checkSql(sql);
        db.exec(sql);
        recorded.push(sql);
      },
      get: (sql, ...args) => {
        const params = normaliseParams(args);
        const st = readStatement(prepare(sql), sql);
        return (params === undefined ? st.get() : st.get(params as never)) as never;
      },
      all: (sql, ...args) => {
        const params = normaliseParams(args);
        const st = readStatement(prepare(sql), sql);
        return (params === undefined ? st.all() : st.all(params as never)) as never;
      },
    };
  }

  #commit(version: number): void {
    this.#db.exec("COMMIT");
    this.#version = version;
    this.#busy = false;
  }

  #rollback(): void {
    if (this.#db.inTransaction) this.#db.exec("ROLLBACK");
    this.#busy = false;
  }
}

function readStatement(st: Database.Statement, sql: string): Database.Statement {
  if (!st.reader) throw new InputError(`get() and all() are for reads; use run() for: ${sql.slice(0, 80)}`);
  return st;
}

/** better-sqlite3's many ways of passing parameters, reduced to one array or one object. */
function normaliseParams(args: unknown[]): Params | undefined {
  if (args.length === 0) return undefined;
  if (args.length === 1 && isNamed(args[0])) return args[0] as Params;
  const flat: Param[] = [];
  for (const a of args) {
    if (Array.isArray(a)) flat.push(...(a as Param[]));
    else if (isNamed(a)) throw new InputError("mixing named and positional parameters is not supported by the Journal");
    else flat.push(a as Param);
  }
  return flat;
}

function isNamed(v: unknown): boolean {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function createVersionTable(version: number): string[] {
  return [
    `CREATE TABLE IF NOT EXISTS ${VERSION_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)`,
    `INSERT OR REPLACE INTO ${VERSION_TABLE} (id, version) VALUES (1, ${version})`,
  ];
}

function hostVersion(db: Database.Database): { hasTable: boolean; version: number } {
  const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(VERSION_TABLE);
  if (!exists) return { hasTable: false, version: 0 };
  const row = db.prepare(`SELECT version FROM ${VERSION_TABLE} WHERE id = 1`).get() as { version: number } | undefined;
  return { hasTable: true, version: row?.version ?? 0 };
}

function setVersion(db: Database.Database, version: number): void {
  db.transaction(() => {
    for (const sql of createVersionTable(version)) db.exec(sql);
  })();
}

function hasUserTables(db: Database.Database): boolean {
  return (
    db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != ?").get(VERSION_TABLE) !==
    undefined
  );
}

async function seed(db: Database.Database, sink: ChangeSink, version: number, tmpDir: string): Promise<void> {
  const dir = fs.mkdtempSync(path.join(tmpDir, "tidemark-seed-"));
  try {
    const file = path.join(dir, "seed.db");
    await db.backup(file);
    await sink.addSnapshot(version, file);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Whether the host died between the ack of its very first change (version 1, which creates
 * the version table) and its commit: the database is still empty, and the backup holds that
 * one change, rewindable. Like any acknowledged change the host did not commit, it is rewound.
 */
function diedBeforeFirstCommit(db: Database.Database, host: { hasTable: boolean }, head: BackendHead): boolean {
  return !host.hasTable && head.version === 1 && head.prevVersion === 0 && !hasUserTables(db);
}

function notJournaled(head: number): TidemarkError {
  return new TidemarkError("E_STALE", `the backup is at version ${head} but the host database has no ${VERSION_TABLE} table`, {
    hint: "this database was not written through the Journal, or it was replaced; restore it from the backup (tidemark restore)",
  });
}
