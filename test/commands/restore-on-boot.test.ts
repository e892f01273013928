/**
 * Restore on boot: `restore --if-db-not-exists / --if-replica-exists` for a service's start or a
 * container's entrypoint, and the daemon's `restoreIfMissing`, which restores before it serves.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { request, startDaemon } from "../helpers/daemon.js";
import { tmpDir } from "../helpers/tmp.js";
import { rows as rowsOf } from "../helpers/sqlite.js";

const lines = (...changes: object[]) => changes.map((c) => JSON.stringify(c)).join("\n") + "\n";

async function backupWith(dir: string, n: number): Promise<string> {
  const backup = path.join(dir, "backup");
  expect((await runCli(["init", backup])).code).toBe(0);
  const changes: object[] = [{ version: 1, transaction: ["CREATE TABLE t (x)"] }];
  for (let v = 2; v <= n; v++) changes.push({ version: v, transaction: [`INSERT INTO t VALUES (${v})`] });
  const r = await runCli(["ingest", backup], { input: lines(...changes) });
  expect(r.code, r.stderr).toBe(0);
  return backup;
}


describe("restore --if-db-not-exists and --if-replica-exists", () => {
  it("--if-db-not-exists exits 0 and touches nothing when the database exists, without reading the backup", async () => {
    const dir = tmpDir();
    const dest = path.join(dir, "app.db");
    fs.writeFileSync(dest, "the host's own data");
    const r = await runCli(["restore", path.join(dir, "no-such-backup"), dest, "--if-db-not-exists"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${dest} exists; nothing restored\n`);
    expect(r.stderr).toBe("");
    expect(fs.readFileSync(dest, "utf8")).toBe("the host's own data");
    expect(fs.readdirSync(dir)).toEqual(["app.db"]);
    const json = await runCli(["restore", path.join(dir, "no-such-backup"), dest, "--if-db-not-exists", "--json"]);
    expect(JSON.parse(json.stdout)).toEqual({ restored: false, dest, reason: `${dest} exists` });
  });

  it("--if-replica-exists exits 0 when there is no backup, or an empty one; without it, that is an error", async () => {
    const dir = tmpDir();
    const dest = path.join(dir, "app.db");
    const missing = path.join(dir, "no-such-backup");
    const none = await runCli(["restore", missing, dest, "--if-replica-exists"]);
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toBe(`there is no backup at ${missing} yet; nothing restored\n`);
    const plain = await runCli(["restore", missing, dest]);
    expect(plain.code).toBe(1);
    expect(plain.stderr).toMatch(/no backup at/);
    const empty = path.join(dir, "empty");
    expect((await runCli(["init", empty])).code).toBe(0);
    const r = await runCli(["restore", empty, dest, "--if-replica-exists"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${empty} holds no changes yet; nothing restored\n`);
    expect(fs.existsSync(dest)).toBe(false);
  });

  it("both flags restore a missing database from a backup that has one", async () => {
    const dir = tmpDir();
    const backup = await backupWith(dir, 4);
    const dest = path.join(dir, "app.db");
    const r = await runCli(["restore", backup, dest, "--if-db-not-exists", "--if-replica-exists"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^restored version 4 to /);
    expect(rowsOf(dest)).toEqual([2, 3, 4]);
  });

  it("refuses --force with --if-db-not-exists", async () => {
    const dir = tmpDir();
    const r = await runCli(["restore", path.join(dir, "b"), path.join(dir, "x.db"), "--force", "--if-db-not-exists"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/give --force or --if-db-not-exists, not both/);
  });
});

describe("the daemon's restoreIfMissing", () => {
  it("restores a missing database file before it serves, and leaves an existing one alone", async () => {
    const dir = tmpDir();
    await backupWith(dir, 5);
    fs.mkdirSync(path.join(dir, "app"));
    const config = { databases: [{ name: "app", backend: "backup", restoreIfMissing: "app/app.db" }] };
    const d = await startDaemon(dir, config);
    const file = path.join(dir, "app", "app.db");
    try {
      // "ready" is logged once the socket listens: the file was complete by then.
      const logged = d.logs().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
      const restoredAt = logged.findIndex((l) => l.msg === "restored the missing database file before serving");
      expect(restoredAt).toBeGreaterThanOrEqual(0);
      expect(logged[restoredAt]).toMatchObject({ db: "app", file, version: 5 });
      expect(restoredAt).toBeLessThan(logged.findIndex((l) => l.msg === "ready"));
      expect(rowsOf(file)).toEqual([2, 3, 4, 5]);
      expect((await request(d.socket, "GET", "/healthz")).status).toBe(200);
    } finally {
      expect(await d.stop()).toBe(0);
    }
    // The host wrote on; a restart must not restore over it.
    const db = new Database(file);
    db.exec("INSERT INTO t VALUES (99)");
    db.close();
    const again = await startDaemon(dir, config);
    expect(again.logs()).not.toContain("restored the missing database file");
    expect(await again.stop()).toBe(0);
    expect(rowsOf(file)).toEqual([2, 3, 4, 5, 99]);
  });

  it("starts with nothing to restore from a new backup, and refuses to start when the restore fails", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, { databases: [{ name: "app", backend: "new-backup", restoreIfMissing: "app.db" }] });
    expect(d.logs()).toContain("the backup holds nothing yet: nothing to restore");
    expect(await d.stop()).toBe(0);
    expect(fs.existsSync(path.join(dir, "app.db"))).toBe(false);

    await backupWith(dir, 3);
    fs.writeFileSync(path.join(dir, "c.json"), JSON.stringify({ databases: [{ name: "app", backend: "backup", restoreIfMissing: "no-such-dir/app.db" }] }));
    const r = await runCli(["daemon", "--config", path.join(dir, "c.json")], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/Error: database app: restoring the missing .*no-such-dir\/app\.db failed: cannot restore to .*: directory .* does not exist/);
    expect(fs.existsSync(path.join(dir, "tidemark.sock"))).toBe(false);
  });

  it("a second daemon on the same socket says so before it opens any database", async () => {
    const dir = tmpDir();
    const config = { databases: [{ name: "a", backend: "data/a" }, { name: "b", backend: "data/b" }] };
    const first = await startDaemon(dir, config);
    try {
      const second = await runCli(["daemon", "--config", first.configFile!], { cwd: dir });
      expect(second.code).toBe(1);
      expect(second.stderr).toMatch(/Error: another daemon is listening on .*tidemark\.sock/);
      expect(second.stderr).toMatch(/Try: one daemon serves every database: ask it \(tidemark status --socket\)/);
      const output = second.stdout + second.stderr;
      expect(output).not.toMatch(/failed to open|E_LOCKED.*lock|writer lock/);
      expect((await request(first.socket, "GET", "/healthz")).status).toBe(200);
    } finally {
      expect(await first.stop()).toBe(0);
    }
  });
});
