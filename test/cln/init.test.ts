import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

/** A node database at `dataVersion`, with a little data. */
function nodeDb(dir: string, dataVersion: number): string {
  const file = path.join(dir, "lightningd.sqlite3");
  const db = new Database(file);
  db.exec("CREATE TABLE vars (name VARCHAR(32), val VARCHAR(255), intval INTEGER, blobval BLOB, PRIMARY KEY (name))");
  db.prepare("INSERT INTO vars (name, intval) VALUES ('data_version', ?)").run(dataVersion);
  db.exec("CREATE TABLE peers (id INTEGER PRIMARY KEY, node_id BLOB, address TEXT)");
  db.exec("INSERT INTO peers (node_id, address) VALUES (x'02aabb', '127.0.0.1:9735')");
  db.close();
  return file;
}

function lightningDir(): { root: string; dir: string } {
  const root = tmpDir();
  const dir = path.join(root, "bitcoin");
  fs.mkdirSync(dir);
  return { root, dir };
}

async function status(backup: string): Promise<{ version: number; baseVersion: number }> {
  const r = await runCli(["status", backup, "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

describe("cln init", () => {
  it("seeds the backup with a snapshot of lightningd.sqlite3 at its data_version, then writes backup.lock", async () => {
    const { root, dir } = lightningDir();
    const db = nodeDb(dir, 42);
    const backup = path.join(root, "backup");
    const r = await runCli(["cln", "init", backup, "--lightning-dir", dir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`created backup at ${backup}, seeded with a snapshot of lightningd.sqlite3 at data_version 42`);
    expect(JSON.parse(fs.readFileSync(path.join(dir, "backup.lock"), "utf8"))).toEqual({ backend_url: backup });
    expect(await status(backup)).toMatchObject({ version: 42, baseVersion: 42 });

    const restored = path.join(root, "restored.sqlite3");
    expect((await runCli(["restore", backup, restored, "--rules", "core-lightning"])).code).toBe(0);
    expectSameDb(restored, db);
  });

  it("records a relative backup location as an absolute path, so the plugin finds it from the lightning directory", async () => {
    const { root, dir } = lightningDir();
    const r = await runCli(["cln", "init", "backup", "--lightning-dir", "bitcoin"], { cwd: root });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(dir, "backup.lock"), "utf8"))).toEqual({ backend_url: path.join(root, "backup") });
  });

  it("starts an empty backup for a node that has never run", async () => {
    const { root, dir } = lightningDir();
    const backup = path.join(root, "backup");
    const r = await runCli(["cln", "init", backup, "--lightning-dir", dir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/created an empty backup .*lightningd's first write \(data_version 1\) starts it/);
    expect(await status(backup)).toMatchObject({ version: 0 });
  });

  it("refuses an existing backup.lock without --force, and --force replaces it", async () => {
    const { root, dir } = lightningDir();
    nodeDb(dir, 7);
    const old = JSON.stringify({ backend_url: "file:///mnt/old/backup.dbak" });
    fs.writeFileSync(path.join(dir, "backup.lock"), old);

    const refused = await runCli(["cln", "init", path.join(root, "backup"), "--lightning-dir", dir]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`Error: ${path.join(dir, "backup.lock")} already exists`);
    expect(refused.stderr).toMatch(/Try: .*--force/);
    expect(fs.readFileSync(path.join(dir, "backup.lock"), "utf8")).toBe(old);
    expect(fs.existsSync(path.join(root, "backup"))).toBe(false);

    const forced = await runCli(["cln", "init", path.join(root, "backup"), "--lightning-dir", dir, "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(dir, "backup.lock"), "utf8"))).toEqual({ backend_url: path.join(root, "backup") });
    expect(await status(path.join(root, "backup"))).toMatchObject({ version: 7 });
  });

  it("refuses a backup location that already holds a backup, and leaves backup.lock alone", async () => {
    const { root, dir } = lightningDir();
    const backup = path.join(root, "backup");
    expect((await runCli(["init", backup])).code).toBe(0);
    const r = await runCli(["cln", "init", backup, "--lightning-dir", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/a backup already exists/);
    expect(fs.existsSync(path.join(dir, "backup.lock"))).toBe(false);
  });

  it("refuses the base directory when a network directory below it holds the node database", async () => {
    const { root, dir } = lightningDir();
    nodeDb(dir, 3);
    const r = await runCli(["cln", "init", path.join(root, "backup"), "--lightning-dir", root]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`Try: give the network directory: --lightning-dir ${dir}`);
  });

  it("refuses a database that is not Core Lightning's", async () => {
    const { root, dir } = lightningDir();
    const db = new Database(path.join(dir, "lightningd.sqlite3"));
    db.exec("CREATE TABLE other (x)");
    db.close();
    const r = await runCli(["cln", "init", path.join(root, "backup"), "--lightning-dir", dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/has no vars table: it is not a Core Lightning database/);
    expect(fs.existsSync(path.join(dir, "backup.lock"))).toBe(false);
  });

  it("refuses a node database with random bytes after its header, and one cut short: no backup, no backup.lock", async () => {
    for (const bad of ["junk", "cut"] as const) {
      const { root, dir } = lightningDir();
      const file = nodeDb(dir, 7);
      if (bad === "junk") {
        fs.writeFileSync(file, Buffer.concat([Buffer.from("SQLite format 3\0", "latin1"), Buffer.from(Array.from({ length: 8176 }, (_, i) => (i * 7919 + 13) % 256))]));
      } else {
        const db = new Database(file);
        db.exec("CREATE TABLE big (b); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO big SELECT printf('%0100d', i) FROM n");
        db.close();
        fs.truncateSync(file, 4096 * 2);
      }
      const backup = path.join(root, "backup");
      const r = await runCli(["cln", "init", backup, "--lightning-dir", dir]);
      expect(r.code, `${bad}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(/^Error: .*lightningd\.sqlite3: not a readable SQLite database: /m);
      expect(fs.existsSync(path.join(dir, "backup.lock"))).toBe(false);
      expect(fs.existsSync(backup)).toBe(false);
    }
  });
});

describe("cln commands: help and usage", () => {
  it.each(["cln-plugin", "cln init", "cln import"])("tidemark %s --help explains the command", async (command) => {
    const args = command.split(" ");
    const r = await runCli([...args, "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Usage: tidemark ${args.join(" ")}`);
    expect(r.stdout).toContain("backup.lock");
    expect(r.stdout.length).toBeGreaterThan(600);
  });

  it("lists the Core Lightning commands in the top-level help", async () => {
    const r = await runCli(["--help"]);
    expect(r.stdout).toMatch(/cln-plugin/);
    expect(r.stdout).toMatch(/\bcln\b/);
  });

  it.each([
    [["cln", "init", "x"], /required option '--lightning-dir <dir>' not specified/],
    [["cln", "init", "--lightning-dir", "."], /give the backup location, or --daemon-socket/],
    [["cln", "init", "x", "--lightning-dir", ".", "--daemon-db", "cln"], /--daemon-db only applies with --daemon-socket/],
    [["cln", "import", "a.dbak"], /missing required argument 'backend'/],
    [["cln", "frobnicate"], /unknown command/],
    [["cln-plugin", "extra"], /too many arguments/],
  ])("usage error %j exits 2", async (args, message) => {
    const r = await runCli(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });
});
