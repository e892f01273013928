import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import type { Backend } from "../../src/backup/backup.js";
import type { Param, Statement } from "../../src/model/change.js";
import { TidemarkError } from "../../src/util/errors.js";
import { applyChange } from "../../src/ops/ingest.js";
import { Journal, VERSION_TABLE, backendSink, type ChangeSink, type JournalTransaction } from "../../src/host/journal.js";
import { restore } from "../../src/ops/restore.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { Workload } from "../helpers/workload.js";

/** Runs generated statements through a Journal transaction. */
function runAll(tx: JournalTransaction, statements: Statement[]): void {
  for (const st of statements) {
    if (typeof st === "string") tx.exec(st);
    else if (st.params === undefined) tx.exec(st.sql);
    else if (Array.isArray(st.params)) tx.run(st.sql, ...(st.params as Param[]));
    else tx.run(st.sql, st.params);
  }
}

async function setup(): Promise<{ dir: string; hostFile: string; backupDir: string; backend: Backend; db: Database.Database }> {
  const dir = tmpDir();
  const backupDir = path.join(dir, "backup");
  const hostFile = path.join(dir, "host.db");
  const backend = await openBackend(backupDir, { mode: "create" });
  return { dir, hostFile, backupDir, backend, db: new Database(hostFile) };
}

async function restoredEqualsHost(backend: Backend, dir: string, hostFile: string): Promise<void> {
  const out = path.join(dir, `restored-${Date.now()}.db`);
  await restore(backend, out);
  expectSameDb(out, hostFile);
}

describe("Journal", () => {
  it("synchronous transactions on an in-process file backend restore exactly", async () => {
    const { dir, hostFile, backend, db } = await setup();
    const journal = Journal.openSync(db, backendSink(backend) as Required<ReturnType<typeof backendSink>>);
    expect(journal.version).toBe(1); // the version table is change 1
    const work = new Workload(8);
    for (let i = 0; i < 100; i++) journal.transactionSync((tx) => runAll(tx, work.transaction()));
    expect(journal.version).toBe(101);
    expect(db.prepare(`SELECT version FROM ${VERSION_TABLE}`).pluck().get()).toBe(101);
    expect(backend.head().version).toBe(101);
    db.close();
    await restoredEqualsHost(backend, dir, hostFile);
    await backend.close();
  });

  it("asynchronous transactions return the callback's value and skip read-only ones", async () => {
    const { dir, hostFile, backend, db } = await setup();
    const journal = await Journal.open(db, backendSink(backend));
    await journal.transaction((tx) => tx.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"));
    const id = await journal.transaction((tx) => tx.run("INSERT INTO notes (body) VALUES (?)", "hello").lastInsertRowid);
    expect(id).toBe(1);
    const before = backend.head().version;
    const rows = await journal.transaction((tx) => tx.all("SELECT body FROM notes"));
    expect(rows).toEqual([{ body: "hello" }]);
    expect(backend.head().version).toBe(before); // nothing written, nothing sent
    await journal.transaction((tx) => tx.run("INSERT INTO notes (body) VALUES (@b)", { b: Buffer.from([1, 2]) }));
    db.close();
    await restoredEqualsHost(backend, dir, hostFile);
    await backend.close();
  });

  it("at open, a backup one ahead (the host died before committing) is rewound, and the redo wins", async () => {
    const { dir, hostFile, backend, db } = await setup();
    let journal = await Journal.open(db, backendSink(backend));
    await journal.transaction((tx) => tx.exec("CREATE TABLE t (x TEXT)"));
    // The ack for version 3 arrived, then the host died before COMMIT.
    await applyChange(backend, { version: 3, transaction: ["INSERT INTO t VALUES ('never committed')"] });
    journal = await Journal.open(db, backendSink(backend));
    expect(journal.version).toBe(2);
    expect(backend.head()).toEqual({ version: 2, prevVersion: null });
    await journal.transaction((tx) => tx.run("INSERT INTO t VALUES (?)", "committed"));
    db.close();
    await restoredEqualsHost(backend, dir, hostFile);
    await backend.close();
  });

  it("refuses a host that lost committed state, and a backup that missed changes", async () => {
    const { dir, hostFile, backend, db } = await setup();
    const journal = await Journal.open(db, backendSink(backend));
    await journal.transaction((tx) => tx.exec("CREATE TABLE t (x)"));
    fs.copyFileSync(hostFile, path.join(dir, "old.db")); // version 2
    for (let i = 0; i < 3; i++) await journal.transaction((tx) => tx.run("INSERT INTO t VALUES (?)", i));
    db.close();

    const old = new Database(path.join(dir, "old.db"));
    const stale = await Journal.open(old, backendSink(backend)).catch((e: unknown) => e as TidemarkError);
    expect(stale).toBeInstanceOf(TidemarkError);
    expect((stale as TidemarkError).code).toBe("E_STALE");
    expect((stale as TidemarkError).hint).toBe("restore the host database; do not continue");
    old.close();

    const ahead = new Database(hostFile);
    ahead.exec(`UPDATE ${VERSION_TABLE} SET version = 9`);
    const gap = await Journal.open(ahead, backendSink(backend)).catch((e: unknown) => e as TidemarkError);
    expect((gap as TidemarkError).code).toBe("E_GAP");
    ahead.close();
    await backend.close();
  });

  it("a failing sink rolls the host back and throws; the next transaction goes through", async () => {
    const { dir, hostFile, backend, db } = await setup();
    const inner = backendSink(backend);
    let fail = false;
    const sink: ChangeSink = {
      ...inner,
      addChange: (c) => (fail ? Promise.reject(new TidemarkError("E_UNAVAILABLE", "daemon unreachable")) : inner.addChange(c)),
    };
    const journal = await Journal.open(db, sink);
    await journal.transaction((tx) => tx.exec("CREATE TABLE t (x)"));
    fail = true;
    await expect(journal.transaction((tx) => tx.run("INSERT INTO t VALUES (?)", "lost"))).rejects.toThrow(/daemon unreachable/);
    expect(db.prepare("SELECT count(*) FROM t").pluck().get()).toBe(0);
    expect(journal.version).toBe(2);
    fail = false;
    await journal.transaction((tx) => tx.run("INSERT INTO t VALUES (?)", "kept"));
    expect(journal.version).toBe(3);
    db.close();
    await restoredEqualsHost(backend, dir, hostFile);
    await backend.close();
  });

  it("refuses non-deterministic SQL before it runs, and rolls back", async () => {
    const { backend, db } = await setup();
    const journal = await Journal.open(db, backendSink(backend));
    await journal.transaction((tx) => tx.exec("CREATE TABLE t (x, at)"));
    const err = await journal
      .transaction((tx) => {
        tx.run("INSERT INTO t VALUES (?, ?)", 1, "fine");
        tx.run("INSERT INTO t VALUES (2, datetime('now'))");
      })
      .catch((e: unknown) => e as TidemarkError);
    expect((err as TidemarkError).code).toBe("E_NONDETERMINISTIC");
    expect(db.prepare("SELECT count(*) FROM t").pluck().get()).toBe(0);
    await journal.transaction((tx) => tx.run("INSERT INTO t VALUES (?, ?)", 2, new Date(0).toISOString()));
    expect(backend.head().version).toBe(3);
    await backend.close();
    db.close();
  });

  it("refuses non-deterministic SQL in the shared ingest path too (a sink fed by hand), unless the Journal and its sink opt out", async () => {
    const { dir, hostFile, backend, db } = await setup();
    // A change that did not come through the Journal's recorder: the backend's door refuses it.
    const sink = backendSink(backend);
    await sink.addChange({ version: 1, transaction: ["CREATE TABLE t (x)"] });
    await expect(sink.addChange({ version: 2, transaction: ["INSERT INTO t VALUES (CURRENT_DATE)"] })).rejects.toMatchObject({ code: "E_NONDETERMINISTIC" });
    expect(backend.head().version).toBe(1);
    await backend.rewind();
    db.close();

    // Opted out on both sides: the host runs it, the backup takes it, and a restore replays it.
    const lax = new Database(hostFile);
    const journal = await Journal.open(lax, backendSink(backend, { allowNondeterministic: true }), { allowNondeterministic: true });
    await journal.transaction((tx) => tx.exec("CREATE TABLE t (x)"));
    await journal.transaction((tx) => tx.run("INSERT INTO t VALUES (length(randomblob(16)))"));
    expect(backend.head().version).toBe(journal.version);
    await restoredEqualsHost(backend, dir, hostFile);
    await backend.close();
    lax.close();
  });

  it("seeds an empty backup from an existing database with a snapshot", async () => {
    const { dir, hostFile, backend, db } = await setup();
    db.exec("CREATE TABLE legacy (x); INSERT INTO legacy VALUES ('from before tidemark')");
    let refused: TidemarkError | undefined;
    try {
      Journal.openSync(db, backendSink(backend) as Required<ReturnType<typeof backendSink>>);
    } catch (e) {
      refused = e as TidemarkError;
    }
    expect(refused?.message).toMatch(/the backup is empty but the host database is not/);
    expect(refused?.hint).toMatch(/Journal\.open\(\)/);
    const journal = await Journal.open(db, backendSink(backend));
    expect(journal.version).toBe(1);
    expect((await backend.status()).baseVersion).toBe(1);
    await journal.transaction((tx) => tx.run("INSERT INTO legacy VALUES (?)", "after"));
    db.close();
    await restoredEqualsHost(backend, dir, hostFile);
    await backend.close();
  });
});
