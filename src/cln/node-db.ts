/**
 * Reads Core Lightning's own database, `lightningd.sqlite3` in the lightning directory: its
 * `data_version`, and consistent snapshots of it.
 */
import fs from "node:fs";
import path from "node:path";
import { InputError } from "../util/errors.js";
import { openReadonly, snapshotSqlite, type SqliteSnapshot } from "../ops/sqlite-snapshot.js";

/** The node database's file name in the lightning directory. */
export const NODE_DB_FILE = "lightningd.sqlite3";

/** lightningd's data_version bump (`db_data_version_incr`), a statement of every transaction it numbers. */
const DATA_VERSION_BUMP = /^\s*UPDATE\s+vars\s+SET\s+intval\s*=\s*intval\s*\+\s*1\s+WHERE\s+name\s*=\s*'data_version'/i;

/**
 * Whether a db_write's statements bump lightningd's data_version. Every transaction lightningd
 * numbers does; the writes it reports without a new version (the PRAGMAs around a table
 * rebuild) do not. So a write that repeats a version and bumps it is a redo of that version,
 * and one that does not is a continuation of it.
 */
export function bumpsDataVersion(statements: readonly string[]): boolean {
  return statements.some((st) => DATA_VERSION_BUMP.test(st));
}

/** A consistent copy of the node database, in a temp directory the caller removes with `dispose`. */
export interface NodeSnapshot extends SqliteSnapshot {
  /** `data_version` as of the copy. */
  readonly dataVersion: number;
}

/** The node database in `lightningDir`, or null when there is none (a node not started yet). */
export function nodeDbPath(lightningDir: string): string | null {
  const file = path.join(path.resolve(lightningDir), NODE_DB_FILE);
  return fs.existsSync(file) ? file : null;
}

/**
 * Copies the node database with SQLite's backup API (consistent even while lightningd writes)
 * and reads `data_version` from the copy, so the version is exactly the copy's.
 */
export async function snapshotNodeDb(dbFile: string): Promise<NodeSnapshot> {
  const copy = await snapshotSqlite(dbFile, dbFile, NODE_DB_FILE);
  try {
    return { ...copy, dataVersion: readDataVersion(copy.file) };
  } catch (err) {
    copy.dispose();
    throw err;
  }
}

/** Reads `SELECT intval FROM vars WHERE name='data_version'` from a node database. */
export function readDataVersion(dbFile: string): number {
  const db = openReadonly(dbFile, dbFile);
  try {
    let row: { intval: unknown } | undefined;
    try {
      row = db.prepare("SELECT intval FROM vars WHERE name = 'data_version'").get() as { intval: unknown } | undefined;
    } catch (err) {
      throw new InputError(`${dbFile} has no vars table: it is not a Core Lightning database (${(err as Error).message})`);
    }
    const v = row?.intval;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
      throw new InputError(`${dbFile}: data_version in vars is ${row ? JSON.stringify(v) : "missing"}; expected an integer >= 1`, {
        hint: "is this the lightningd.sqlite3 of a node that has started at least once?",
      });
    }
    return v;
  } finally {
    db.close();
  }
}
