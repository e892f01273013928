/**
 * Replays a backup into a new SQLite file: the base snapshot, then every transaction in
 * batched SQLite transactions, rewriting statements on the way. Restore and compaction both
 * build on it.
 */
import fs from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import Database from "better-sqlite3";
import type { Backend } from "./backend.js";
import type { Statement } from "./change.js";
import { TidemarkError } from "./errors.js";
import type { Rewriter } from "./rewrite.js";

/** Statements per SQLite transaction during replay. */
const BATCH_STATEMENTS = 20_000;
/** Prepared statements kept for parameterised SQL. */
const STATEMENT_CACHE = 512;

/** Options for {@link replayInto}. */
export interface ReplayOptions {
  /** The version to stop at; defaults to the head. */
  readonly to?: number;
  /** Rewrites each statement before it runs. */
  readonly rewriter?: Rewriter;
  /** Called after each change with versions done and versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** A replayed database, still open. */
export interface Replayed {
  /** The open database; the caller closes it. */
  readonly db: Database.Database;
  /** The version the database is now at. */
  readonly version: number;
  /** Timestamp of that change. */
  readonly timestamp: number;
  /** Changes applied, base snapshot included. */
  readonly changes: number;
  /** Statements executed. */
  readonly statements: number;
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
  let db: ReplayDb | null = null;
  let first = 0;
  let version = 0;
  let timestamp = 0;
  let changes = 0;
  let statements = 0;
  try {
    for await (const change of backend.streamChanges({ to })) {
      if (first === 0) first = change.version;
      if (change.snapshot) {
        db?.close();
        db = null;
        await pipeline(Readable.from(change.snapshot.open()), fs.createWriteStream(dbPath));
      }
      db ??= new ReplayDb(dbPath);
      if (change.transaction) {
        const list = change.transaction;
        for (let i = 0; i < list.length; i++) {
          const st = rewriter ? rewriter.rewrite(list[i]!) : list[i]!;
          db.run(st, change.version, i);
        }
        statements += list.length;
      }
      version = change.version;
      timestamp = change.timestamp;
      changes++;
      options.onProgress?.(version - first + 1, to - first + 1);
    }
    if (version !== to || db === null) {
      throw new TidemarkError("E_RESTORE", `replay of ${backend.location} stopped at version ${version}, before ${to}`, {
        hint: "the backup changed while it was read (a compaction or rewind); run the command again",
      });
    }
    return { db: db.finish(), version, timestamp, changes, statements };
  } catch (err) {
    db?.close();
    throw err;
  }
}

/** A database being replayed into, tuned for bulk writes and put back as it was at the end. */
class ReplayDb {
  readonly #db: Database.Database;
  readonly #journalMode: string;
  readonly #cache = new Map<string, Database.Statement>();
  #inBatch = 0;

  constructor(file: string) {
    this.#db = new Database(file);
    this.#journalMode = String(this.#db.pragma("journal_mode", { simple: true }));
    // Durability comes from the fsync and rename at the end, so SQLite's own journal is moot here.
    this.#db.pragma("journal_mode = OFF");
    this.#db.pragma("synchronous = OFF");
    this.#db.pragma("locking_mode = EXCLUSIVE");
    this.#db.pragma("cache_size = -65536");
  }

  /** Runs one statement, inside a batch transaction. */
  run(st: Statement, version: number, index: number): void {
    const db = this.#db;
    if (this.#inBatch === 0) db.exec("BEGIN");
    try {
      if (typeof st === "string") {
        db.exec(st);
      } else if (st.params === undefined) {
        db.exec(st.sql);
      } else {
        let prepared = this.#cache.get(st.sql);
        if (!prepared) {
          if (this.#cache.size >= STATEMENT_CACHE) this.#cache.clear();
          prepared = db.prepare(st.sql);
          this.#cache.set(st.sql, prepared);
        }
        prepared.run(st.params);
      }
    } catch (err) {
      const sql = typeof st === "string" ? st : st.sql;
      throw new TidemarkError(
        "E_RESTORE",
        `replaying version ${version}, statement ${index} failed: ${(err as Error).message}: ${excerpt(sql)}`,
        { hint: "if this statement is known to be bad, rewrite it with --rules (see README, Statement rewriting)", cause: err },
      );
    }
    if (++this.#inBatch >= BATCH_STATEMENTS) this.#commit();
  }

  #commit(): void {
    if (this.#inBatch > 0 && this.#db.inTransaction) this.#db.exec("COMMIT");
    this.#inBatch = 0;
  }

  /** Commits, restores the snapshot's journal mode, and hands over the database. */
  finish(): Database.Database {
    this.#commit();
    this.#cache.clear();
    // A host statement may have changed the journal mode itself; only undo our own change.
    if (String(this.#db.pragma("journal_mode", { simple: true })) === "off") {
      this.#db.pragma(`journal_mode = ${this.#journalMode}`);
    }
    this.#db.pragma("locking_mode = NORMAL");
    return this.#db;
  }

  close(): void {
    this.#cache.clear();
    this.#db.close();
  }
}

function excerpt(sql: string): string {
  const flat = sql.replace(/\s+/g, " ").trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
}
