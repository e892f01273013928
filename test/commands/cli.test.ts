import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { CLI, runCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";
import { rows as rowsOf } from "../helpers/sqlite.js";

const COMMANDS = ["init", "ingest", "status", "restore", "compact", "rewind", "verify"];

function lines(...changes: object[]): string {
  return changes.map((c) => JSON.stringify(c)).join("\n") + "\n";
}

const CREATE = { version: 1, transaction: ["CREATE TABLE t (x)"] };
const insert = (v: number) => ({ version: v, transaction: [{ sql: "INSERT INTO t VALUES (?)", params: [v] }] });

async function backupWith(n: number): Promise<{ dir: string; backup: string }> {
  const dir = tmpDir();
  const backup = path.join(dir, "backup");
  expect((await runCli(["init", backup])).code).toBe(0);
  const changes: object[] = [CREATE];
  for (let v = 2; v <= n; v++) changes.push(insert(v));
  const r = await runCli(["ingest", backup], { input: lines(...changes) });
  expect(r.code, r.stderr).toBe(0);
  return { dir, backup };
}


describe("cli: help and usage", () => {
  it("every command has help with a usage line", async () => {
    const top = await runCli(["--help"]);
    expect(top.code).toBe(0);
    for (const c of COMMANDS) expect(top.stdout).toContain(c);
    for (const c of COMMANDS) {
      const r = await runCli([c, "--help"]);
      expect(r.code, c).toBe(0);
      expect(r.stdout, c).toMatch(new RegExp(`Usage: tidemark ${c}`));
      expect(r.stdout.length, c).toBeGreaterThan(200);
    }
  });

  it.each([
    [["frobnicate"], /unknown command/],
    [["restore"], /missing required argument/],
    [["restore", "a"], /missing required argument 'dest'/],
    [["restore", "a", "b", "--version", "zero"], /expected an integer >= 1/],
    [["restore", "a", "b", "--version", "0"], /expected an integer >= 1/],
    [["status", "a", "--bogus"], /unknown option/],
    [["init", "x", "--from-db", "y.db"], /--from-db needs --version/],
    [["init", "x", "--version", "3"], /--version only applies with --from-db/],
  ])("usage error %j exits 2", async (args, message) => {
    const r = await runCli(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });
});

describe("cli: init", () => {
  it("refuses an existing backup and a non-empty directory", async () => {
    const { dir, backup } = await backupWith(2);
    const r = await runCli(["init", backup]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^Error: a backup already exists at/m);
    expect(r.stderr).toMatch(/^Try: /m);
    fs.writeFileSync(path.join(dir, "other"), "x");
    const r2 = await runCli(["init", dir]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/is not empty/);
  });

  it("seeds from a live database, and refuses files that are not databases", async () => {
    const dir = tmpDir();
    const host = path.join(dir, "host.db");
    const db = new Database(host);
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES ('seeded')");
    db.close();
    const backup = path.join(dir, "backup");
    const r = await runCli(["init", backup, "--from-db", host, "--version", "42"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("seeded at version 42");
    const status = JSON.parse((await runCli(["status", backup, "--json"])).stdout);
    expect(status).toMatchObject({ version: 42, baseVersion: 42, records: 1 });

    const ingest = await runCli(["ingest", backup], { input: lines({ version: 43, transaction: ["INSERT INTO t VALUES ('next')"] }) });
    expect(ingest.code, ingest.stderr).toBe(0);
    expect((await runCli(["restore", backup, path.join(dir, "out.db")])).code).toBe(0);
    expect(rowsOf(path.join(dir, "out.db"))).toEqual(["seeded", "next"]);

    fs.writeFileSync(path.join(dir, "text.db"), "not a database at all, just text. ".repeat(100));
    const bad = await runCli(["init", path.join(dir, "b2"), "--from-db", path.join(dir, "text.db"), "--version", "1"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/not a readable SQLite database/);
    const missing = await runCli(["init", path.join(dir, "b3"), "--from-db", path.join(dir, "none.db"), "--version", "1"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no such file/);
    expect(fs.existsSync(path.join(dir, "b2"))).toBe(false);
  });
  it("seeds from a WAL-mode database whose host holds it open with commits still in the WAL", async () => {
    const dir = tmpDir();
    const host = path.join(dir, "host.db");
    const db = new Database(host);
    db.pragma("journal_mode = WAL");
    db.pragma("wal_autocheckpoint = 0");
    db.exec("CREATE TABLE t (x)");
    const insertRow = db.prepare("INSERT INTO t VALUES (?)");
    for (let i = 0; i < 3000; i++) insertRow.run(`row ${i} ${"x".repeat(i % 300)}`);
    db.exec("DELETE FROM t WHERE rowid % 4 = 0");
    expect(fs.statSync(`${host}-wal`).size).toBeGreaterThan(100_000);
    const expected = db.prepare("SELECT x FROM t ORDER BY rowid").pluck().all();
    try {
      const backup = path.join(dir, "backup");
      const r = await runCli(["init", backup, "--from-db", host, "--version", "5"]);
      expect(r.code, r.stderr).toBe(0);
      insertRow.run("after the snapshot");
      expect((await runCli(["restore", backup, path.join(dir, "out.db")])).code).toBe(0);
      expect(rowsOf(path.join(dir, "out.db"))).toEqual(expected);
    } finally {
      db.close();
    }
  });
});

describe("cli: ingest", () => {
  it("acks each change and stops at the first bad line, keeping what was acked", async () => {
    const { dir, backup } = await backupWith(1);
    const input = lines(insert(2), insert(3)) + '{"version": 4, "transaction": [oops]}\n' + lines(insert(4));
    const r = await runCli(["ingest", backup], { input });
    expect(r.code).toBe(1);
    expect(r.stdout.trim().split("\n").map((l) => JSON.parse(l))).toEqual([
      { version: 2, action: "append" },
      { version: 3, action: "append" },
    ]);
    expect(r.stderr).toMatch(/^Error: line 3: invalid JSON/m);
    expect(r.stderr).toMatch(/^Try: /m);
    await runCli(["restore", backup, path.join(dir, "out.db")]);
    expect(rowsOf(path.join(dir, "out.db"))).toEqual([2, 3]);
  });

  it.each([
    ["a gap", lines({ version: 9, transaction: ["SELECT 1"] }), /E?line 1: change 9 does not follow the backup head 2/, /Try: send the host database as a new base/],
    ["a stale version", lines({ version: 1, transaction: ["SELECT 1"] }), /line 1: change 1 is behind the backup head 2/, /restore the host database/],
    ["a malformed change", lines({ version: 3, transaction: [{ sql: 1 }] }), /line 1: change\.transaction\[0\]\.sql: expected SQL text/, /README/],
    ["a missing snapshot file", lines({ version: 5, snapshot_path: "/no/such.db" }), /line 1: change\.snapshot_path: cannot open \/no\/such\.db: ENOENT/, null],
  ])("refuses %s with a one-line error and changes nothing", async (_name, input, message, hint) => {
    const { backup } = await backupWith(2);
    const before = (await runCli(["status", backup, "--json"])).stdout;
    const r = await runCli(["ingest", backup], { input });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    if (hint) expect(r.stderr).toMatch(hint);
    expect((await runCli(["status", backup, "--json"])).stdout).toBe(before);
  });

  it("refuses a snapshot that is not a SQLite file", async () => {
    const { dir, backup } = await backupWith(2);
    fs.writeFileSync(path.join(dir, "fake.db"), "hello");
    const r = await runCli(["ingest", backup], { input: lines({ version: 5, snapshot_path: path.join(dir, "fake.db") }) });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is not a SQLite database/);
  });

  it.each([
    ["a FIFO", (file: string) => execFileSync("mkfifo", [file])],
    ["a symbolic link to /dev/zero", (file: string) => fs.symlinkSync("/dev/zero", file)],
  ])("refuses a snapshot_path that is %s, unread, and changes nothing", async (_name, make) => {
    const { dir, backup } = await backupWith(2);
    const file = path.join(dir, "snap.db");
    make(file);
    const before = (await runCli(["status", backup, "--json"])).stdout;
    const r = await runCli(["ingest", backup], { input: lines({ version: 5, snapshot_path: file }) });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/line 1: change\.snapshot_path .*snap\.db is a (FIFO|symbolic link), not a regular file; it was not read/);
    expect((await runCli(["status", backup, "--json"])).stdout).toBe(before);
  });

  it("says how to create a backup that does not exist", async () => {
    const dir = tmpDir();
    const r = await runCli(["ingest", path.join(dir, "missing")], { input: lines(CREATE) });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no backup at .*missing/);
    expect(r.stderr).toMatch(/Try: create one with: tidemark init/);
    expect(fs.existsSync(path.join(dir, "missing"))).toBe(false);
  });

  it("an unknown URL scheme names the package it would need", async () => {
    const r = await runCli(["status", "gopher://host/x"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no backend for "gopher:" URLs/);
    expect(r.stderr).toMatch(/npm install tidemark-backend-gopher/);
  });
});

describe("cli: status, restore, compact, rewind, verify", () => {
  it("status prints the head, rewind target and range", async () => {
    const { backup } = await backupWith(5);
    const r = await runCli(["status", backup]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/head\s+5/);
    expect(r.stdout).toMatch(/rewind to\s+4/);
    expect(r.stdout).toMatch(/restorable\s+versions 1\.\.5/);
  });

  it("restore refuses an existing file, a bad rules file, and a version not held", async () => {
    const { dir, backup } = await backupWith(3);
    const dest = path.join(dir, "out.db");
    fs.writeFileSync(dest, "keep me");
    const exists = await runCli(["restore", backup, dest]);
    expect(exists.code).toBe(1);
    expect(exists.stderr).toMatch(/already exists/);
    expect(fs.readFileSync(dest, "utf8")).toBe("keep me");

    fs.writeFileSync(path.join(dir, "rules.json"), "[{]");
    const rules = await runCli(["restore", backup, path.join(dir, "o2.db"), "--rules", path.join(dir, "rules.json")]);
    expect(rules.code).toBe(1);
    expect(rules.stderr).toMatch(/rules file .*invalid JSON/);

    const range = await runCli(["restore", backup, path.join(dir, "o3.db"), "--version", "7"]);
    expect(range.code).toBe(1);
    expect(range.stderr).toMatch(/version 7 is not held .*1\.\.3/);
    expect(range.stderr).toMatch(/Try: pick a version from 1 to 3/);

    const ok = await runCli(["restore", backup, path.join(dir, "o4.db"), "--version", "2", "--json"]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ version: 2, changes: 2 });
    expect(rowsOf(path.join(dir, "o4.db"))).toEqual([2]);
  });

  it("compact and rewind report what they did and refuse what they cannot do", async () => {
    const { dir, backup } = await backupWith(20);
    const c = await runCli(["compact", backup]);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/compacted to a base at version 19/);
    expect(c.stdout).toMatch(/records 20 -> 2/);

    const r1 = await runCli(["rewind", backup]);
    expect(r1.code).toBe(0);
    expect(r1.stdout).toMatch(/rewound version 20; the head is now 19/);
    const r2 = await runCli(["rewind", backup]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/change 19 cannot be rewound: only the last change can be, and only once/);

    await runCli(["restore", backup, path.join(dir, "out.db")]);
    expect(rowsOf(path.join(dir, "out.db"))).toEqual(Array.from({ length: 18 }, (_, i) => i + 2));

    const empty = path.join(dir, "empty");
    await runCli(["init", empty]);
    const r3 = await runCli(["rewind", empty]);
    expect(r3.code).toBe(1);
    expect(r3.stderr).toMatch(/nothing to rewind/);
  });

  it("verify passes a sound backup and pinpoints a damaged one", async () => {
    const { backup } = await backupWith(6);
    const ok = await runCli(["verify", backup]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^ok: 6 records/m);

    const log = path.join(backup, "log-0000000001.tml");
    const bytes = fs.readFileSync(log);
    const at = bytes.indexOf("TDMK", bytes.indexOf("TDMK", 1) + 1); // the record of version 3
    bytes[at + 40]! ^= 0xff;
    fs.writeFileSync(log, bytes);
    const bad = await runCli(["verify", backup]);
    expect(bad.code).toBe(1);
    expect(bad.stderr + bad.stdout).toMatch(new RegExp(`offset ${at}, version 3`));
  });
});

describe("cli: bad input to compact", () => {
  it("refuses a missing backup and a bad rules file without touching the backup", async () => {
    const { dir, backup } = await backupWith(5);
    const missing = await runCli(["compact", path.join(dir, "nope")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no backup at/);
    fs.writeFileSync(path.join(dir, "rules.json"), '[{"name":"x","pattern":"(","replacement":""}]');
    const before = (await runCli(["status", backup, "--json"])).stdout;
    const rules = await runCli(["compact", backup, "--rules", path.join(dir, "rules.json")]);
    expect(rules.code).toBe(1);
    expect(rules.stderr).toMatch(/rule \[0\]\.pattern/);
    expect((await runCli(["status", backup, "--json"])).stdout).toBe(before);
  });
});

describe("cli: progress bars", () => {
  it("restore, compact, verify and copy draw a bar with rate and ETA on a terminal, and nothing otherwise", async () => {
    const dir = tmpDir();
    const b = path.join(dir, "backup");
    await runCli(["init", b]);
    const input = ['{"version":1,"transaction":["CREATE TABLE t (x)"]}'];
    for (let v = 2; v <= 3000; v++) input.push(JSON.stringify({ version: v, transaction: [`INSERT INTO t VALUES (${v})`] }));
    expect((await runCli(["ingest", b], { input: `${input.join("\n")}\n` })).code).toBe(0);
    const commands: [string, string[]][] = [
      ["restore", ["restore", b, path.join(dir, "r.db")]],
      ["verify", ["verify", b]],
      ["copy", ["copy", b, path.join(dir, "copy")]],
      ["compact", ["compact", b]],
    ];
    for (const [label, args] of commands) {
      // util-linux script(1) runs the command on a pseudo-terminal, as an operator's shell would.
      const cmd = [process.execPath, CLI, ...args].map((a) => `'${a}'`).join(" ");
      const onTty = execFileSync("script", ["-qec", cmd, "/dev/null"], { encoding: "utf8" });
      expect(onTty, label).toMatch(new RegExp(`${label} \\[.*\\] \\d+% \\| \\d+/\\d+ versions \\| \\d+/s \\| ETA \\d+s`));
      fs.rmSync(path.join(dir, "r.db"), { force: true });
      fs.rmSync(path.join(dir, "copy"), { recursive: true, force: true });

      const quiet = execFileSync("script", ["-qec", `${cmd} --quiet`, "/dev/null"], { encoding: "utf8" });
      expect(quiet, label).not.toMatch(/ETA/);
      fs.rmSync(path.join(dir, "r.db"), { force: true });
      fs.rmSync(path.join(dir, "copy"), { recursive: true, force: true });

      const piped = await runCli(args);
      expect(piped.code, piped.stderr).toBe(0);
      expect(piped.stderr + piped.stdout, label).not.toMatch(/ETA|\[\u2588|\u001b\[/);
      fs.rmSync(path.join(dir, "r.db"), { force: true });
      fs.rmSync(path.join(dir, "copy"), { recursive: true, force: true });
    }
  });
});
