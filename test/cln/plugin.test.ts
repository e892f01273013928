import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it, onTestFinished } from "vitest";
import { runCli } from "../helpers/cli.js";
import { startDaemon } from "../helpers/daemon.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { buildDbak } from "../fixtures/cln/dbak-writer.js";
import { FakeLightningd, paymentWrites } from "../fixtures/cln/fake-lightningd.js";

/** A lightning directory with a backup made by `tidemark cln init`, and a node that has never run. */
async function setup(): Promise<{ root: string; dir: string; backup: string; node: FakeLightningd }> {
  const root = tmpDir();
  const dir = path.join(root, "bitcoin");
  fs.mkdirSync(dir);
  const backup = path.join(root, "backup");
  const init = await runCli(["cln", "init", backup, "--lightning-dir", dir]);
  expect(init.code, init.stderr).toBe(0);
  return { root, dir, backup, node: track(new FakeLightningd(dir)) };
}

function track(node: FakeLightningd): FakeLightningd {
  onTestFinished(() => node.close());
  return node;
}

async function transactions(node: FakeLightningd, n: number, tag = "pay"): Promise<void> {
  for (let i = 0; i < n; i++) expect(await node.transaction(paymentWrites(node.dataVersion + 1, tag))).toBe("continue");
}

async function head(backup: string): Promise<number> {
  const r = await runCli(["status", backup, "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout).version;
}

/** Restores the backup with the core-lightning rules and compares it with the node database, row by row. */
async function expectRestoresTo(backup: string, nodeDb: string): Promise<string> {
  const out = path.join(path.dirname(nodeDb), "..", `restored-${Date.now()}.sqlite3`);
  const r = await runCli(["restore", backup, out, "--rules", "core-lightning"]);
  expect(r.code, r.stderr).toBe(0);
  expectSameDb(out, nodeDb);
  return out;
}

describe("cln-plugin: the db_write hook", () => {
  it("declares the db_write hook and backup-compact, and answers unknown methods with an error", async () => {
    const { node } = await setup();
    node.startPlugin();
    const manifest = await node.handshake();
    expect(manifest).toMatchObject({
      hooks: [{ name: "db_write" }],
      rpcmethods: [expect.objectContaining({ name: "backup-compact" })],
      options: [expect.objectContaining({ name: "backup-destination", type: "string" })],
      dynamic: false,
    });
    await expect(node.request("frobnicate", {})).rejects.toThrow(/unknown method frobnicate/);
  });

  it("backs up every transaction before lightningd commits it, and the backup restores the node row for row", async () => {
    const { dir, backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    await transactions(node, 40);
    expect(await node.stopPlugin()).toBe(0);
    expect(node.dataVersion).toBe(40);
    expect(await head(backup)).toBe(40);
    await expectRestoresTo(backup, path.join(dir, "lightningd.sqlite3"));
    expect(node.logsAt("broken")).toEqual([]);
    expect(node.logsAt("info").join("\n")).toContain(`backing up to ${backup}, at version 0`);
  });

  it("takes a db_write that arrives before init, reading backup.lock from its working directory", async () => {
    const { dir, backup, node } = await setup();
    node.startPlugin();
    await node.request("getmanifest", {});
    expect(await node.transaction(paymentWrites(1))).toBe("continue");
    await node.request("init", { options: {}, configuration: { "lightning-dir": dir } });
    await transactions(node, 5);
    expect(await node.stopPlugin()).toBe(0);
    expect(node.logs.filter((l) => l.level === "unusual" || l.level === "broken")).toEqual([]);
    await expectRestoresTo(backup, path.join(dir, "lightningd.sqlite3"));
  });

  it("after a crash between the ack and the commit, the redone version replaces the acknowledged one", async () => {
    const { dir, backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    await transactions(node, 10);
    // Acknowledged, then lightningd and the plugin die before the commit.
    expect(await node.hook(["INSERT INTO payments (id, label) VALUES (1000, 'rolled back')"])).toBe("continue");
    await node.killPlugin();
    expect(node.dataVersion).toBe(10);

    node.startPlugin();
    await node.handshake();
    expect(await node.transaction(["INSERT INTO payments (id, label) VALUES (1000, 'committed')"])).toBe("continue");
    expect(node.logsAt("info").join("\n")).toMatch(/stopped after version 11 was backed up and before it committed it/);
    await transactions(node, 5);
    expect(await node.stopPlugin()).toBe(0);

    expect(await head(backup)).toBe(16);
    const restored = await expectRestoresTo(backup, path.join(dir, "lightningd.sqlite3"));
    const db = new Database(restored, { readonly: true });
    expect(db.prepare("SELECT label FROM payments WHERE id = 1000").pluck().get()).toBe("committed");
    db.close();
    expect(node.logsAt("broken")).toEqual([]);
  });

  it("within one session, a repeat of the data_version just acknowledged is a continuation of it: acked, stored after it, restored in order", async () => {
    const { root, dir, backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    await transactions(node, 3);
    // lightningd commits version 3, then reports writes without a new data_version.
    const continued = ["PRAGMA foreign_keys = OFF;", "INSERT INTO payments (id, label) VALUES (900, 'committed without a version bump')"];
    expect(await node.request("db_write", { data_version: 3, writes: continued })).toEqual({ result: "continue" });
    node.db.exec(continued[1]!);
    expect(await node.request("db_write", { data_version: 3, writes: ["PRAGMA foreign_keys = ON;"] })).toEqual({ result: "continue" });
    await transactions(node, 2);
    expect(await node.stopPlugin()).toBe(0);
    expect(node.logsAt("broken")).toEqual([]);
    expect(await head(backup)).toBe(5);
    await expectRestoresTo(backup, path.join(dir, "lightningd.sqlite3"));
    const at3 = path.join(root, "at-3.sqlite3");
    expect((await runCli(["restore", backup, at3, "--version", "3"])).code).toBe(0);
    const db = new Database(at3, { readonly: true });
    expect(db.prepare("SELECT label FROM payments WHERE id = 900").pluck().get()).toBe("committed without a version bump");
    db.close();

    // After a restart, a first write that repeats the head without bumping data_version is a
    // continuation too (a migration's table rebuild at start-up), not a redo: version 5 stays.
    node.startPlugin();
    await node.handshake();
    expect(await node.request("db_write", { data_version: 5, writes: ["PRAGMA foreign_keys = OFF;"] })).toEqual({ result: "continue" });
    await transactions(node, 1);
    expect(await node.stopPlugin()).toBe(0);
    expect(node.logs.filter((l) => /replacing the backup's copy/.test(l.message))).toEqual([]);
    await expectRestoresTo(backup, path.join(dir, "lightningd.sqlite3"));

    // After a restart, lightningd one version behind a continued version lost state: refused.
    node.startPlugin();
    await node.handshake();
    expect(await node.request("db_write", { data_version: 6, writes: ["PRAGMA foreign_keys = ON;"] })).toEqual({ result: "continue" });
    await node.killPlugin();
    node.startPlugin();
    await node.handshake();
    const redo = ["INSERT INTO payments (id) VALUES (902)", "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 5"];
    expect(await node.request("db_write", { data_version: 6, writes: redo })).toEqual({ result: "abort" });
    expect(node.logsAt("broken").at(-1)).toMatch(/lightningd lost state: it is at data_version 5, but .* already holds version 6/);
  });

  it("within one session, a data_version older than the one acknowledged is refused: lightningd never goes back without restarting", async () => {
    const { backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    await transactions(node, 3);
    expect(await node.request("db_write", { data_version: 2, writes: ["INSERT INTO payments (id) VALUES (200)"] })).toEqual({ result: "abort" });
    const [line] = node.logsAt("broken");
    expect(line).toMatch(/refusing db_write for data_version 2: lightningd went back to data_version 2 after version 3 was acknowledged/);
    expect(line).toMatch(/must not run on this database again/);
    await node.stopPlugin();
    expect(await head(backup)).toBe(3);
  });

  it("refuses a node that lost state, logs how to restore it, and the logged restore brings it back", async () => {
    const { root, dir, backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    await transactions(node, 5);
    const old = path.join(root, "old.sqlite3");
    node.db.exec(`VACUUM INTO '${old}'`);
    await transactions(node, 3);
    const latest = path.join(root, "latest.sqlite3");
    node.db.exec(`VACUUM INTO '${latest}'`);
    await node.close();

    // The node's database is replaced by an older copy.
    fs.copyFileSync(old, path.join(dir, "lightningd.sqlite3"));
    const stale = track(new FakeLightningd(dir));
    stale.startPlugin();
    await stale.handshake();
    expect(await stale.transaction(paymentWrites(6))).toBe("abort");
    expect(await stale.transaction(paymentWrites(6))).toBe("abort");
    expect(stale.dataVersion).toBe(5);
    const [line, again] = stale.logsAt("broken");
    expect(line).toMatch(/refusing db_write for data_version 6: lightningd lost state: it is at data_version 5, but .* already holds version 8/);
    expect(line).toMatch(/Do not continue/);
    expect(again).toMatch(/an earlier write was refused/);
    await stale.close();
    expect(await head(backup)).toBe(8);

    // The advice in the log line, followed to the letter.
    const command = /then (tidemark restore \S+ \S+ --rules core-lightning)/.exec(line!)![1]!;
    const [, restoreBackup, dest] = command.split(" ").slice(1);
    expect(dest).toBe(path.join(dir, "lightningd.sqlite3"));
    fs.renameSync(dest!, `${dest}.old`);
    const r = await runCli(["restore", restoreBackup!, dest!, "--rules", "core-lightning"]);
    expect(r.code, r.stderr).toBe(0);
    expectSameDb(dest!, latest);
  });

  it("refuses an out-of-date backup, and says to start a new one", async () => {
    const { dir, backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    await transactions(node, 5);
    await node.stopPlugin();
    // lightningd runs without the plugin for a while.
    for (let v = 6; v <= 8; v++) node.commitWithoutPlugin(paymentWrites(v));

    node.startPlugin();
    await node.handshake();
    expect(await node.transaction(paymentWrites(9))).toBe("abort");
    const [line] = node.logsAt("broken");
    expect(line).toMatch(/the backup is out of date: lightningd is at data_version 8, but .* ends at version 5, so versions 6\.\.8 are missing/);
    expect(line).toContain(`tidemark cln init <new backup location> --lightning-dir ${dir} --force`);
    expect(node.dataVersion).toBe(8);
    await node.stopPlugin();
    expect(await head(backup)).toBe(5);
  });

  it("backup-compact folds the log while the node keeps writing, and the backup still restores the node", async () => {
    const { dir, backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    await transactions(node, 30);
    const compaction = node.request("backup-compact", {});
    await transactions(node, 3);
    const stats = (await compaction) as { baseVersion: number; before: { records: number }; after: { records: number } };
    expect(stats.baseVersion).toBeGreaterThanOrEqual(29);
    expect(stats.after.records).toBeLessThan(stats.before.records);
    await transactions(node, 3);
    expect(await node.stopPlugin()).toBe(0);
    const s = JSON.parse((await runCli(["status", backup, "--json"])).stdout);
    expect(s).toMatchObject({ version: 36, baseVersion: stats.baseVersion });
    await expectRestoresTo(backup, path.join(dir, "lightningd.sqlite3"));
  });

  it("refuses every write when backup.lock is missing, and says so at start-up", async () => {
    const root = tmpDir();
    const node = track(new FakeLightningd(root));
    node.startPlugin();
    await node.handshake();
    expect(await node.transaction(paymentWrites(1))).toBe("abort");
    const broken = node.logsAt("broken").join("\n");
    expect(broken).toContain(`cannot open the backup: no backup.lock in ${root}`);
    expect(broken).toContain("lightningd will stop at its first database write");
    expect(broken).toContain(`tidemark cln init <backup location> --lightning-dir ${root}`);
    expect(node.dataVersion).toBe(0);
  });

  it("refuses a backup.lock that still names the Python plugin's .dbak file, and says to import it", async () => {
    const root = tmpDir();
    const dbak = path.join(root, "backup.dbak");
    fs.writeFileSync(dbak, buildDbak([{ version: 1, transaction: ["CREATE TABLE t (x)"] }]).bytes);
    fs.writeFileSync(path.join(root, "backup.lock"), JSON.stringify({ backend_url: `file://${dbak}` }));
    const node = track(new FakeLightningd(root));
    node.startPlugin();
    await node.handshake();
    expect(await node.transaction(paymentWrites(1))).toBe("abort");
    expect(node.logsAt("broken").at(-1)).toContain(`tidemark cln import ${dbak} <new backup directory> --lightning-dir ${root}`);
  });

  it("refuses malformed db_write params rather than skipping the write", async () => {
    const { node } = await setup();
    node.startPlugin();
    await node.handshake();
    expect(await node.request("db_write", { data_version: "7", writes: [] })).toEqual({ result: "abort" });
    expect(node.logsAt("broken")[0]).toMatch(/db_write params: data_version must be an integer/);
  });

  it("accepts the db_write params nested as {db_write: {...}}", async () => {
    const { dir, backup, node } = await setup();
    node.startPlugin();
    await node.handshake();
    const { dataVersion, writes } = node.writesFor(paymentWrites(1));
    expect(await node.request("db_write", { db_write: { data_version: dataVersion, writes } })).toEqual({ result: "continue" });
    node.commitWithoutPlugin(paymentWrites(1));
    await node.stopPlugin();
    await expectRestoresTo(backup, path.join(dir, "lightningd.sqlite3"));
  });
});

describe("cln-plugin: through the daemon", () => {
  it("writes through a running daemon, seeded by cln init, with rewinds and compaction, and restores the node", async () => {
    const root = tmpDir();
    const dir = path.join(root, "bitcoin");
    fs.mkdirSync(dir);
    const backendPath = path.join(root, "data", "cln");
    const daemon = await startDaemon(root, { socket: "tidemark.sock", databases: [{ name: "cln", backend: backendPath, rules: "core-lightning" }] });
    onTestFinished(async () => void (await daemon.stop()));

    // A node that ran before it had a backup: cln init seeds the daemon database from it.
    const node = track(new FakeLightningd(dir));
    for (let v = 1; v <= 3; v++) node.commitWithoutPlugin(paymentWrites(v));
    const init = await runCli(["cln", "init", backendPath, "--lightning-dir", dir, "--daemon-socket", daemon.socket, "--daemon-db", "cln"]);
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toContain("seeded with a snapshot of lightningd.sqlite3 at data_version 3");
    expect(JSON.parse(fs.readFileSync(path.join(dir, "backup.lock"), "utf8"))).toEqual({
      backend_url: backendPath,
      daemon_socket: daemon.socket,
      daemon_db: "cln",
    });

    node.startPlugin();
    await node.handshake();
    await transactions(node, 10);
    expect(await node.hook(["INSERT INTO payments (id, label) VALUES (1000, 'rolled back')"])).toBe("continue");
    await node.killPlugin();
    node.startPlugin();
    await node.handshake();
    expect(await node.transaction(["INSERT INTO payments (id, label) VALUES (1000, 'committed')"])).toBe("continue");
    await transactions(node, 5);
    const stats = (await node.request("backup-compact", {})) as { baseVersion: number };
    expect(stats.baseVersion).toBe(18);
    await transactions(node, 2);
    expect(await node.stopPlugin()).toBe(0);
    expect(node.logsAt("broken")).toEqual([]);
    expect(node.logsAt("info").join("\n")).toContain('backing up to database "cln" of the tidemark daemon');

    expect(await head(backendPath)).toBe(21);
    const restored = await expectRestoresTo(backendPath, path.join(dir, "lightningd.sqlite3"));
    const db = new Database(restored, { readonly: true });
    expect(db.prepare("SELECT label FROM payments WHERE id = 1000").pluck().get()).toBe("committed");
    db.close();
  });
});

describe("the tidemark-cln-plugin executable", () => {
  it("is what lightningd runs: no arguments, the plugin protocol on stdio", async () => {
    const { spawn } = await import("node:child_process");
    const bin = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../dist/src/cln-plugin-bin.js");
    expect(fs.statSync(bin).mode & 0o111).not.toBe(0);
    const child = spawn(bin, [], { cwd: tmpDir(), stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stdin.end(`${JSON.stringify({ jsonrpc: "2.0", id: 1, method: "getmanifest", params: {} })}\n\n`);
    await new Promise((r) => child.on("exit", r));
    const reply = JSON.parse(out.trim().split("\n\n")[0]!);
    expect(reply.result.hooks).toEqual([{ name: "db_write" }]);
    expect(reply.result.rpcmethods.map((m: { name: string }) => m.name)).toEqual(["backup-compact"]);
  });
});
