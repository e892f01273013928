// @ts-check
/**
 * The SQLite side of a replay: one connection, its statements run in batched transactions. It
 * runs in the replay worker thread (replay-worker.js) for long replays, so that reading and
 * decoding the backup overlaps with SQLite; short ones run it on the calling thread, where
 * starting a worker would cost more than the whole replay (replay.ts decides).
 *
 * Plain JavaScript on purpose: worker threads load files as they are, and this one must run both
 * from dist/ and from the sources under test. Each message `{op, ...}` is answered by the
 * return value of {@link ReplaySqlite.handle}; a failing statement throws with `at`, its index,
 * and `sql`, its text.
 */
import Database from "better-sqlite3";

/** Statements per SQLite transaction. */
const BATCH_STATEMENTS = 20_000;
/** Prepared statements kept for parameterised SQL. */
const STATEMENT_CACHE = 512;
/** The most of a database integrity_check reads through a memory map (SQLite caps it at its build's maximum). */
const MMAP_BYTES = 2 ** 40;
/** One replay's database connection. */
export class ReplaySqlite {
  /** @type {import("better-sqlite3").Database | null} */
  #db = null;
  #journalMode = "delete";
  /** @type {Map<string, import("better-sqlite3").Statement>} */
  #cache = new Map();
  #inBatch = 0;

  /** @returns {import("better-sqlite3").Database} */
  #current() {
    if (!this.#db) throw new Error("replay: no database is open");
    return this.#db;
  }

  /**
   * @param {string} file
   * @param {boolean} asIs open only to read and check it (a captured backup's rebuilt file): no pragma writes a byte
   */
  #open(file, asIs) {
    const db = new Database(file);
    this.#db = db;
    this.#journalMode = String(db.pragma("journal_mode", { simple: true }));
    this.#inBatch = 0;
    if (asIs) return;
    // Durability comes from the fsync and rename at the end, so SQLite's own journal is moot here.
    db.pragma("journal_mode = OFF");
    db.pragma("synchronous = OFF");
    db.pragma("locking_mode = EXCLUSIVE");
    db.pragma("cache_size = -32768");
  }

  /**
   * Runs statements in order; on failure, throws with the index of the failing one as `at` and
   * its SQL as `sql` (the sender keeps no copy of a batch it has sent).
   * @param {readonly (string | {sql: string, params?: unknown})[]} statements
   */
  run(statements) {
    const d = this.#current();
    for (let i = 0; i < statements.length; i++) {
      const st = /** @type {string | {sql: string, params?: unknown}} */ (statements[i]);
      if (this.#inBatch === 0) d.exec("BEGIN");
      try {
        if (typeof st === "string") d.exec(st);
        else if (st.params === undefined) d.exec(st.sql);
        else {
          let prepared = this.#cache.get(st.sql);
          if (!prepared) {
            if (this.#cache.size >= STATEMENT_CACHE) this.#cache.clear();
            prepared = d.prepare(st.sql);
            this.#cache.set(st.sql, prepared);
          }
          prepared.run(/** @type {any} */ (st.params));
        }
      } catch (err) {
        throw Object.assign(/** @type {Error} */ (err), { at: i, sql: typeof st === "string" ? st : st.sql });
      }
      if (++this.#inBatch >= BATCH_STATEMENTS) this.#commit();
    }
  }

  #commit() {
    const d = this.#current();
    if (this.#inBatch > 0 && d.inTransaction) d.exec("COMMIT");
    this.#inBatch = 0;
  }

  /** Commits and puts the database back in its snapshot's journal mode. */
  #finish() {
    const d = this.#current();
    this.#commit();
    this.#cache.clear();
    // A host statement may have changed the journal mode itself; only undo our own change.
    if (String(d.pragma("journal_mode", { simple: true })) === "off") d.pragma(`journal_mode = ${this.#journalMode}`);
    d.pragma("locking_mode = NORMAL");
  }

  /** Closes the connection, if one is open; an open transaction is rolled back. */
  /**
   * `PRAGMA integrity_check`, reading the file through a memory map: the same check, without a
   * pread system call per page (most of its cost on a big database). The map goes after it.
   */
  #integrityCheck() {
    const d = this.#current();
    d.pragma(`mmap_size = ${MMAP_BYTES}`);
    try {
      return d.pragma("integrity_check");
    } finally {
      d.pragma("mmap_size = 0");
    }
  }

  close() {
    this.#cache.clear();
    this.#db?.close();
    this.#db = null;
  }

  /**
   * Does what a message asks. Synchronous but for "backup", which returns a promise.
   * @param {{op: string, file?: string, asIs?: boolean, statements?: any[], dest?: string}} msg
   * @returns {unknown}
   */
  handle(msg) {
    switch (msg.op) {
      case "open":
        return this.#open(/** @type {string} */ (msg.file), msg.asIs === true);
      case "run":
        return this.run(/** @type {any[]} */ (msg.statements));
      case "finish":
        return this.#finish();
      case "integrity":
        return this.#integrityCheck();
      case "backup":
        return this.#current()
          .backup(/** @type {string} */ (msg.dest))
          .then(() => undefined);
      case "close":
        return this.close();
      default:
        throw new Error(`replay: unknown op ${msg.op}`);
    }
  }
}
