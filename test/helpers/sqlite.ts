/**
 * A reference "host" database and row-by-row comparison of SQLite files.
 */
import Database from "better-sqlite3";
import { expect } from "vitest";
import type { Statement } from "../../src/model/change.js";

/** Applies statements to a database the way a better-sqlite3 host runs them. */
export function applyStatements(db: Database.Database, statements: readonly Statement[]): void {
  db.transaction(() => {
    for (const st of statements) {
      if (typeof st === "string") db.exec(st);
      else if (st.params === undefined) db.exec(st.sql);
      else db.prepare(st.sql).run(st.params);
    }
  })();
}

/** Every schema entry and every row of every table, with SQLite's own types kept apart. */
export interface Dump {
  schema: { type: string; name: string; tbl_name: string; sql: string | null }[];
  tables: Record<string, unknown[]>;
}

/** Reads a whole database into a comparable structure. */
export function dumpDb(file: string): Dump {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    db.defaultSafeIntegers(true);
    const schema = db
      .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
      .all() as Dump["schema"];
    const tables: Record<string, unknown[]> = {};
    for (const s of schema) {
      if (s.type !== "table") continue;
      const quoted = `"${s.name.replace(/"/g, '""')}"`;
      tables[s.name] = db.prepare(`SELECT rowid AS __rowid, * FROM ${quoted} ORDER BY rowid`).all();
    }
    return { schema, tables };
  } finally {
    db.close();
  }
}

/** Asserts that two SQLite files hold the same schema and the same rows, value for value. */
export function expectSameDb(actual: string, expected: string): void {
  const a = dumpDb(actual);
  const b = dumpDb(expected);
  expect(a.schema).toEqual(b.schema);
  expect(Object.keys(a.tables)).toEqual(Object.keys(b.tables));
  for (const name of Object.keys(b.tables)) {
    expect(a.tables[name]!.length, `row count of ${name}`).toBe(b.tables[name]!.length);
    expect(a.tables[name], `rows of ${name}`).toEqual(b.tables[name]);
  }
}

/** The first column of `sql`'s rows in the database at `file`, opened read-only. */
export function rows(file: string, sql = "SELECT x FROM t ORDER BY rowid"): unknown[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).pluck().all();
  } finally {
    db.close();
  }
}
