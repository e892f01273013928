/**
 * Consistent copies of a live SQLite database, taken with SQLite's backup API (safe while the
 * host keeps writing), into a temp directory that the caller disposes of.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { InputError } from "../util/errors.js";

/** A copy of a database in a temp directory. */
export interface SqliteSnapshot {
  readonly file: string;
  readonly bytes: number;
  /** Removes the copy and its directory. */
  dispose(): void;
}

/** Opens a database read-only, failing early (and clearly, naming `what`) if it is not one. */
export function openReadonly(dbPath: string, what: string): Database.Database {
  if (!fs.existsSync(dbPath)) throw new InputError(`${what}: no such file`);
  try {
    const db = new Database(dbPath, { readonly: true, fileMustExist: true });
    db.pragma("schema_version"); // fails here if the file is not a database
    return db;
  } catch (err) {
    throw new InputError(`${what}: not a readable SQLite database: ${(err as Error).message}`, { cause: err });
  }
}

/** Copies `dbPath` with the backup API into a new temp directory; `what` names it in errors. */
export async function snapshotSqlite(dbPath: string, what: string, name = "snapshot.db"): Promise<SqliteSnapshot> {
  const db = openReadonly(dbPath, what);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-snapshot-"));
  const dispose = () => fs.rmSync(dir, { recursive: true, force: true });
  const file = path.join(dir, name);
  try {
    await db.backup(file);
  } catch (err) {
    dispose();
    throw err;
  } finally {
    db.close();
  }
  return { file, bytes: fs.statSync(file).size, dispose };
}
