/**
 * The limit of `init --from-db`: copies a database with better-sqlite3's backup() and fsyncs the
 * copy; bench/read-path.ts times it as a child, as it times `tidemark init`.
 */
import fs from "node:fs";
import Database from "better-sqlite3";

const [source, dest] = process.argv.slice(2);
if (!source || !dest) throw new Error("usage: sqlite-backup-child <source> <dest>");
const db = new Database(source, { readonly: true, fileMustExist: true });
await db.backup(dest);
db.close();
const fd = fs.openSync(dest, "r+");
fs.fsyncSync(fd);
fs.closeSync(fd);
