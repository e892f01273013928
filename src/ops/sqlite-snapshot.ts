/**
 * Consistent copies of a live SQLite database (safe while the host keeps writing): taken with
 * SQLite's backup API into a temp directory that the caller disposes of, or streamed from the
 * file under a read transaction, without a copy.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { InputError } from "../util/errors.js";
import { WalFile } from "./wal-reader.js";
import { walSnapshot } from "./wal-snapshot.js";

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

/** A consistent image of a live database, streamed from its file (and WAL) once. */
export interface SqliteStream {
  /** Size of the image in bytes. */
  readonly bytes: number;
  /**
   * Streams the image, once, then ends the read transaction; throws {@link WalChangedError}
   * when the WAL restarted meanwhile (take a new stream).
   */
  readonly source: AsyncIterable<Uint8Array>;
  /** Ends the read transaction and closes the database (when the stream was not read to its end). */
  close(): void;
}

/**
 * Streams a consistent image of `dbPath` without a copy: under a read transaction, its file's
 * pages with the WAL's latest committed copies laid over them (what the backup API would copy,
 * read once). `what` names it in errors.
 */
export function streamSqlite(dbPath: string, what: string): SqliteStream {
  const db = openReadonly(dbPath, what);
  let fd: number | null = null;
  const wal = new WalFile(`${dbPath}-wal`);
  const close = () => {
    if (db.open && db.inTransaction) db.exec("COMMIT");
    if (db.open) db.close();
    wal.close();
    // Only now: closing any descriptor of the file drops every POSIX lock the process holds on it.
    if (fd !== null) fs.closeSync(fd);
    fd = null;
  };
  try {
    db.exec("BEGIN");
    // A deferred BEGIN takes its snapshot at the first read.
    db.prepare("SELECT count(*) FROM sqlite_master").pluck().get();
    fd = fs.openSync(dbPath, "r");
    const snap = walSnapshot(fd, wal);
    return {
      bytes: snap.dbPages * snap.pageSize,
      source: (async function* () {
        try {
          yield* snap.source;
        } finally {
          close();
        }
      })(),
      close,
    };
  } catch (err) {
    close();
    throw err;
  }
}
