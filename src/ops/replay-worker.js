// @ts-check
/**
 * The SQLite side of a replay, in a worker thread so that reading and decoding the backup on the
 * main thread overlaps with SQLite executing statements here.
 *
 * Plain JavaScript on purpose: worker threads load files as they are, and this one must run both
 * from dist/ and from the sources under test. replay.ts is the only client; see its
 * `SqliteWorker` for the protocol: each message `{id, op, ...}` gets `{id, ok, result | error}`.
 */
import { parentPort } from "node:worker_threads";
import Database from "better-sqlite3";

/** Statements per SQLite transaction. */
const BATCH_STATEMENTS = 20_000;
/** The most of a database integrity_check reads through a memory map (SQLite caps it at its build's maximum). */
const MMAP_BYTES = 2 ** 40;
/** Prepared statements kept for parameterised SQL. */
const STATEMENT_CACHE = 512;

/** @type {import("better-sqlite3").Database | null} */
let db = null;
let journalMode = "delete";
/** @type {Map<string, import("better-sqlite3").Statement>} */
const cache = new Map();
let inBatch = 0;

/** @returns {import("better-sqlite3").Database} */
function current() {
  if (!db) throw new Error("replay worker: no database is open");
  return db;
}

/**
 * @param {string} file
 * @param {boolean} asIs open only to read and check it (a captured backup's rebuilt file): no pragma writes a byte
 */
function open(file, asIs) {
  db = new Database(file);
  journalMode = String(db.pragma("journal_mode", { simple: true }));
  inBatch = 0;
  if (asIs) return;
  // Durability comes from the fsync and rename at the end, so SQLite's own journal is moot here.
  db.pragma("journal_mode = OFF");
  db.pragma("synchronous = OFF");
  db.pragma("locking_mode = EXCLUSIVE");
  db.pragma("cache_size = -32768");
  inBatch = 0;
}

/**
 * Runs statements in order; on failure, reports the index of the failing one.
 * @param {(string | {sql: string, params?: unknown})[]} statements
 */
function run(statements) {
  const d = current();
  for (let i = 0; i < statements.length; i++) {
    const st = /** @type {string | {sql: string, params?: unknown}} */ (statements[i]);
    if (inBatch === 0) d.exec("BEGIN");
    try {
      if (typeof st === "string") d.exec(st);
      else if (st.params === undefined) d.exec(st.sql);
      else {
        let prepared = cache.get(st.sql);
        if (!prepared) {
          if (cache.size >= STATEMENT_CACHE) cache.clear();
          prepared = d.prepare(st.sql);
          cache.set(st.sql, prepared);
        }
        prepared.run(/** @type {any} */ (st.params));
      }
    } catch (err) {
      throw Object.assign(/** @type {Error} */ (err), { at: i });
    }
    if (++inBatch >= BATCH_STATEMENTS) commit();
  }
}

function commit() {
  const d = current();
  if (inBatch > 0 && d.inTransaction) d.exec("COMMIT");
  inBatch = 0;
}

/** Commits and puts the database back in its snapshot's journal mode. */
function finish() {
  const d = current();
  commit();
  cache.clear();
  // A host statement may have changed the journal mode itself; only undo our own change.
  if (String(d.pragma("journal_mode", { simple: true })) === "off") d.pragma(`journal_mode = ${journalMode}`);
  d.pragma("locking_mode = NORMAL");
}

/**
 * `PRAGMA integrity_check`, reading the file through a memory map: the same check, without a
 * pread system call per page (most of its cost on a big database). The map goes after it.
 */
function integrityCheck() {
  const d = current();
  d.pragma(`mmap_size = ${MMAP_BYTES}`);
  try {
    return d.pragma("integrity_check");
  } finally {
    d.pragma("mmap_size = 0");
  }
}

function close() {
  cache.clear();
  db?.close();
  db = null;
}

/**
 * @param {{op: string, file?: string, asIs?: boolean, statements?: any[], dest?: string}} msg
 * @returns {Promise<unknown>}
 */
async function handle(msg) {
  switch (msg.op) {
    case "open":
      return open(/** @type {string} */ (msg.file), msg.asIs === true);
    case "run":
      return run(/** @type {any[]} */ (msg.statements));
    case "finish":
      return finish();
    case "integrity":
      return integrityCheck();
    case "backup":
      await current().backup(/** @type {string} */ (msg.dest));
      return undefined;
    case "close":
      return close();
    default:
      throw new Error(`replay worker: unknown op ${msg.op}`);
  }
}

const port = parentPort;
if (!port) throw new Error("replay-worker.js runs as a worker thread");
port.on("message", (/** @type {any} */ msg) => {
  handle(msg).then(
    (result) => port.postMessage({ id: msg.id, ok: true, result }),
    (/** @type {any} */ err) =>
      port.postMessage({ id: msg.id, ok: false, error: { message: String(err?.message ?? err), at: err?.at } }),
  );
});
