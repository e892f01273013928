/**
 * tidemark watch against real programs that know nothing of tidemark: python3's sqlite3
 * module, the sqlite3 CLI and a better-sqlite3 process, writing randomblob() and
 * datetime('now') (which a statement replay could not reproduce). Every restore is compared
 * row by row with the application's own database.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it, onTestFinished } from "vitest";
import { runCli } from "../helpers/cli.js";
import { dumpDb, expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { runApp, startApp, startWatch, until } from "../helpers/watch.js";

async function restored(backup: string, dir: string, extra: string[] = []): Promise<string> {
  const dest = path.join(dir, `restored-${Math.random().toString(16).slice(2)}.db`);
  const r = await runCli(["restore", backup, dest, ...extra]);
  expect(r.code, r.stderr).toBe(0);
  return dest;
}

async function statusOf(backup: string, extra: string[] = []): Promise<{ version: number; headTimestamp?: number; settings?: { capture?: boolean; encrypted?: boolean }; capture?: { lagTransactions: number | null; walBytes: number } }> {
  const r = await runCli(["status", backup, "--json", ...extra]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

/** Waits until the backup holds every commit in the WAL (as `status --watch` sees it). */
async function caughtUp(backup: string, db: string): Promise<void> {
  await until(async () => (await statusOf(backup, ["--watch", db])).capture?.lagTransactions === 0, "the capture to catch up");
}

function rowIds(file: string): Set<number> {
  const db = new Database(file, { readonly: true });
  try {
    return new Set(db.prepare("SELECT id FROM t").pluck().all() as number[]);
  } finally {
    db.close();
  }
}

describe("tidemark watch", () => {
  it("captures a python3 sqlite3 program's commits exactly: randomblob() and datetime('now') restore row for row", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    await runApp("python", [db, "3"]);
    const w = await startWatch(db, backup);
    await runApp("python", [db, "150"]);
    await caughtUp(backup, db);
    expect(await w.stop()).toBe(0);
    const s = await statusOf(backup);
    expect(s.settings?.capture).toBe(true);
    expectSameDb(await restored(backup, dir), db);
    expect((await runCli(["verify", backup, "--restore"])).code).toBe(0);
  });

  it("follows the WAL through its own checkpoints' restarts (the sqlite3 CLI writing), and keeps the WAL bounded", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    execFileSync("sqlite3", [db], { input: "PRAGMA journal_mode=WAL;\nCREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, b BLOB, at TEXT);\n" });
    const w = await startWatch(db, backup, ["-v", "--checkpoint-frames", "20", "--poll-ms", "20"]);
    // Eight runs of the CLI, each fifty commits in a burst, a pause between them.
    let maxWal = 0;
    for (let run = 0; run < 8; run++) {
      let script = ".timeout 5000\n";
      for (let i = 1; i <= 50; i++) script += `INSERT INTO t (n, b, at) VALUES (${run * 50 + i}, randomblob(${300 + (i % 7) * 400}), datetime('now'));\n`;
      if (run === 7) script += "UPDATE t SET b = randomblob(10) WHERE n % 3 = 0;\nDELETE FROM t WHERE n % 5 = 0;\n";
      execFileSync("sqlite3", [db], { input: script });
      await new Promise((r) => setTimeout(r, 150));
      maxWal = Math.max(maxWal, fs.statSync(`${db}-wal`).size);
    }
    await caughtUp(backup, db);
    expect(await w.stop()).toBe(0);
    expect(w.stderr(), w.stderr()).toContain("the WAL restarted (new salts)");
    expect(w.stderr()).not.toContain("continuity with the backup is lost");
    // 400 commits of up to 3 KiB each (some 1,000 frames), yet the WAL never held more than a
    // burst's worth: it restarted after each.
    expect(maxWal).toBeLessThan(600 * 4120);
    expectSameDb(await restored(backup, dir), db);
  });

  it("loses nothing to the application's own TRUNCATE checkpoints", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    await runApp("python", [db, "1"]);
    const w = await startWatch(db, backup, ["-v", "--checkpoint-frames", "8", "--poll-ms", "20"]);
    const app = startApp("python", [db, "120", "--truncate-every", "4", "--pace", "5"]);
    expect(await app.done, app.output()).toBe(0);
    // While watch holds its read transaction, the application's TRUNCATE reports busy.
    expect(app.output()).toMatch(/checkpoint 1 /);
    await caughtUp(backup, db);
    expect(await w.stop()).toBe(0);
    expect(w.stderr(), w.stderr()).toContain("the WAL restarted (new salts)");
    expectSameDb(await restored(backup, dir), db);
  });

  it("after kill -9 of a better-sqlite3 application, everything it committed is in the backup within a second", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    await runApp("node", [db, "1"]);
    const w = await startWatch(db, backup, ["--checkpoint-frames", "200"]);
    const app = startApp("node", [db, "0"]);
    await until(() => app.committed.length >= 500 + Math.floor(Math.random() * 500), "the application to commit");
    app.child.kill("SIGKILL");
    await app.done;
    const killedAt = Date.now();
    await new Promise((r) => setTimeout(r, 1000 - (Date.now() - killedAt)));
    // Restored while watch still runs: what the backup held one second after the kill.
    const dest = await restored(backup, dir);
    const held = rowIds(dest);
    const missing = app.committed.filter((id) => !held.has(id));
    expect(missing).toEqual([]);
    expectSameDb(dest, db);
    expect(await w.stop()).toBe(0);
  });

  it("after kill -9 of watch, a restart continues without a gap", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    await runApp("python", [db, "1"]);
    let w = await startWatch(db, backup, ["-v"]);
    // A server that keeps its database open, as most do: nothing folds the WAL away.
    const app = startApp("python", [db, "0", "--pace", "20"]);
    const killAt = 10 + Math.floor(Math.random() * 30);
    await until(() => app.committed.length >= killAt, "the application to commit");
    await w.kill();
    await until(() => app.committed.length >= killAt + 40, "commits while watch is down");
    w = await startWatch(db, backup, ["-v"]);
    expect(w.stderr(), w.stderr()).toContain("continuing from the backup's head without a gap");
    await until(() => app.committed.length >= killAt + 80, "commits after the restart");
    app.child.kill("SIGKILL");
    await app.done;
    await caughtUp(backup, db);
    expect(await w.stop()).toBe(0);
    expect(w.stderr()).not.toContain("continuity with the backup is lost");
    expectSameDb(await restored(backup, dir), db);
  });

  it("after kill -9 of watch and a WAL truncated meanwhile, the restart takes a fresh snapshot and says so", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    await runApp("python", [db, "1"]);
    let w = await startWatch(db, backup);
    await runApp("python", [db, "20"]);
    await caughtUp(backup, db);
    await w.kill();
    // With nothing holding it, the application's own TRUNCATE checkpoint empties the WAL.
    await runApp("python", [db, "20", "--truncate-every", "10"]);
    w = await startWatch(db, backup);
    expect(w.stderr()).toMatch(/continuity with the backup is lost: taking a fresh snapshot \(the WAL no longer holds the position/);
    await runApp("python", [db, "20"]);
    await caughtUp(backup, db);
    expect(await w.stop()).toBe(0);
    expectSameDb(await restored(backup, dir), db);
  });

  it("restores a captured backup as of a version and a time", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    await runApp("python", [db, "1"]);
    const w = await startWatch(db, backup);
    await runApp("python", [db, "30"]);
    await caughtUp(backup, db);
    const then = dumpDb(db);
    const at = await statusOf(backup);
    await new Promise((r) => setTimeout(r, 50));
    await runApp("python", [db, "30"]);
    await caughtUp(backup, db);
    expect(await w.stop()).toBe(0);
    for (const flags of [["--version", String(at.version)], ["--time", new Date(at.headTimestamp! + 20).toISOString()]]) {
      expect(dumpDb(await restored(backup, dir, flags)), flags.join(" ")).toEqual(then);
    }
    expect(dumpDb(await restored(backup, dir))).toEqual(dumpDb(db));
  });

  it("an encrypted, compressed captured backup compacts (pages onto the base), copies, verifies, and watch continues after the compaction", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    const keyFile = path.join(dir, "key");
    fs.writeFileSync(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
    const key = ["--key", `1=file:${keyFile}`];
    await runApp("python", [db, "1"]);
    // The application stays up, holding its database open, as a server does: when the last
    // connection closes, SQLite folds the WAL away, and the next watch takes a fresh snapshot.
    const server = new Database(db);
    server.pragma("user_version");
    onTestFinished(() => {
      server.close();
    });
    let w = await startWatch(db, backup, [...key, "--compression", "gzip"]);
    // Two runs, each caught up before the next, so that at least two captured changes follow
    // the first base and compaction has a settled one to fold in (one run can fit in one poll).
    for (let run = 0; run < 2; run++) {
      await runApp("python", [db, "40"]);
      await until(async () => (await statusOf(backup, ["--watch", db, ...key])).capture?.lagTransactions === 0, "the capture to catch up");
    }
    expect(await w.stop()).toBe(0);
    const before = await statusOf(backup, key);
    expect(before.settings).toMatchObject({ capture: true, encrypted: true, compression: "gzip" });
    // Without the key, nothing restores.
    expect((await runCli(["restore", backup, path.join(dir, "nokey.db")])).code).toBe(1);
    const compacted = await runCli(["compact", backup, "--json", ...key]);
    expect(compacted.code, compacted.stderr).toBe(0);
    expect(JSON.parse(compacted.stdout).baseVersion).toBe(before.version - 1);
    expectSameDb(await restored(backup, dir, key), db);
    w = await startWatch(db, backup, ["-v", ...key]);
    expect(w.stderr()).toContain("continuing from the backup's head without a gap");
    await runApp("python", [db, "40"]);
    await until(async () => (await statusOf(backup, ["--watch", db, ...key])).capture?.lagTransactions === 0, "the capture to catch up");
    expect(await w.stop()).toBe(0);
    expectSameDb(await restored(backup, dir, key), db);
    const copy = path.join(dir, "copy");
    const copied = await runCli(["copy", backup, copy, ...key]);
    expect(copied.code, copied.stderr).toBe(0);
    expect((await statusOf(copy, key)).settings?.capture).toBe(true);
    expectSameDb(await restored(copy, dir, key), db);
    const verified = await runCli(["verify", copy, "--restore", ...key]);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
  });

  it("refuses a rollback-journal database with a hint, creating nothing", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    new Database(db).exec("CREATE TABLE t (x)");
    const r = await runCli(["watch", db, path.join(dir, "backup")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is in delete journal mode: tidemark watch captures WAL-mode databases only/);
    expect(r.stderr).toMatch(/Try: .*PRAGMA journal_mode=WAL/);
    expect(fs.existsSync(path.join(dir, "backup"))).toBe(false);
  });

  it("never mixes: watch refuses a write-ahead backup, and a captured backup refuses SQL", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    await runApp("python", [db, "1"]);
    const wa = path.join(dir, "write-ahead");
    expect((await runCli(["init", wa])).code).toBe(0);
    const r = await runCli(["watch", db, wa]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is a write-ahead backup: tidemark watch writes captured backups only/);
    const captured = path.join(dir, "captured");
    const w = await startWatch(db, captured);
    expect(await w.stop()).toBe(0);
    const ingest = await runCli(["ingest", captured], { input: `${JSON.stringify({ version: 2, transaction: ["CREATE TABLE u (x)"] })}\n` });
    expect(ingest.code).toBe(1);
    expect(ingest.stderr).toMatch(/is a captured backup \(tidemark watch\): it takes no SQL changes/);
  });
});
