/**
 * Every hint true: each runs the command a user would, checks the text, and where the hint says
 * what to do, does it and checks that it works.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { request, startDaemon } from "../helpers/daemon.js";
import { tmpDir } from "../helpers/tmp.js";

const line = (c: object) => `${JSON.stringify(c)}\n`;

async function backupWith(dir: string, n: number): Promise<string> {
  const b = path.join(dir, "backup");
  expect((await runCli(["init", b])).code).toBe(0);
  let input = line({ version: 1, transaction: ["CREATE TABLE t (x)"] });
  for (let v = 2; v <= n; v++) input += line({ version: v, transaction: [`INSERT INTO t VALUES (${v})`] });
  expect((await runCli(["ingest", b], { input })).code).toBe(0);
  return b;
}

describe("hints that are true", () => {
  it("E_GAP says to send a new base, and a change with a snapshot is taken", async () => {
    const dir = tmpDir();
    const b = await backupWith(dir, 2);
    const gap = await runCli(["ingest", b], { input: line({ version: 4, transaction: ["INSERT INTO t VALUES (4)"] }) });
    expect(gap.code).toBe(1);
    expect(gap.stderr).toContain("change 4 does not follow the backup head 2: version 3 is missing");
    expect(gap.stderr).toContain('Try: send the host database as a new base at its current version N: a change with a snapshot (ingest: {"version": N, "snapshot_path": "app.db"}');
    // Doing what it says: the host's database at its version 4.
    const host = path.join(dir, "app.db");
    const db = new Database(host);
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (2), (3), (4)");
    db.close();
    const ok = await runCli(["ingest", b], { input: line({ version: 4, snapshot_path: host }) });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('{"version":4,"action":"new-base"}\n');
  });

  it("E_LOCKED on compact and rewind points at the daemon's endpoint, which works", async () => {
    const dir = tmpDir();
    await backupWith(dir, 3);
    const d = await startDaemon(dir, { databases: [{ name: "main", backend: "backup" }] });
    try {
      const compact = await runCli(["compact", path.join(dir, "backup")]);
      expect(compact.code).toBe(1);
      expect(compact.stderr).toMatch(/^Error: .*backup is locked by another writer, PID \d+$/m);
      expect(compact.stderr).toMatch(
        /^Try: if the writer is the tidemark daemon, ask it: curl -X POST --unix-socket <socket> http:\/\/tidemark\/v1\/dbs\/<db>\/compact; otherwise: stop PID \d+ first/m,
      );
      const rewind = await runCli(["rewind", path.join(dir, "backup")]);
      expect(rewind.stderr).toMatch(/ask it: curl -X POST --unix-socket <socket> http:\/\/tidemark\/v1\/dbs\/<db>\/rewind/);
      const viaDaemon = await request(d.socket, "POST", "/v1/dbs/main/compact");
      expect(viaDaemon.status, viaDaemon.body.toString()).toBe(200);
      expect(viaDaemon.json()).toMatchObject({ baseVersion: 2 });
    } finally {
      expect(await d.stop()).toBe(0);
    }
  });

  it("status and init on a file say it is a file, with no doubled errno", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "app.db");
    fs.writeFileSync(file, "not a backup");
    const status = await runCli(["status", file]);
    expect(status.code).toBe(1);
    expect(status.stderr).toBe(
      `Error: ${file} is a file, not a backup directory\nTry: a file backup is a directory (the one holding tidemark.json): give its path, or for init a new or empty directory's\n`,
    );
    expect(status.stderr).not.toMatch(/tidemark init/);
    const init = await runCli(["init", file]);
    expect(init.code).toBe(1);
    expect(init.stderr).toMatch(new RegExp(`^Error: ${file} is a file, not a backup directory`));
    const under = await runCli(["init", path.join(file, "sub")]);
    expect(under.code).toBe(1);
    expect(under.stderr).not.toMatch(/(E[A-Z]+): \1/);
    expect(fs.readFileSync(file, "utf8")).toBe("not a backup");
  });

  it("a config that does not parse names the line and column, YAML and JSON", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "c.yaml"), "databases:\n  - name: a\n   backend: x\n");
    const yaml = await runCli(["daemon", "--config", path.join(dir, "c.yaml")], { cwd: dir });
    expect(yaml.code).toBe(1);
    expect(yaml.stderr).toMatch(/^Error: config file .*c\.yaml does not parse at line 3, column 1: .+$/m);
    expect(yaml.stderr).toContain('Try: check line 3 ("   backend: x") and the line before it; YAML nests by indentation, with spaces');
    fs.writeFileSync(path.join(dir, "c.json"), '{"databases": [\n  {"name": "a",}\n]}\n');
    const json = await runCli(["daemon", "--config", path.join(dir, "c.json")], { cwd: dir });
    expect(json.stderr).toMatch(/^Error: config file .*c\.json does not parse at line 2, column 16: /m);
    expect(fs.existsSync(path.join(dir, "tidemark.sock"))).toBe(false);
  });

  it("takes compound durations, and suggests --flag for -flag", async () => {
    const dir = tmpDir();
    const b = await backupWith(dir, 3);
    const c = await runCli(["compact", b, "-q", "--keep-for", "1h30m"]);
    expect(c.code, c.stderr).toBe(0);
    expect((await runCli(["status", b])).stdout).toMatch(/keeps 90m of history/);
    const bad = await runCli(["compact", b, "--keep-for", "90 minutes"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/expected a duration like 30s, 15m, 6h, 7d or 1h30m/);
    const dash = await runCli(["status", b, "-json"]);
    expect(dash.code).toBe(2);
    expect(dash.stderr).toBe("error: unknown option '-json'\n(Did you mean --json?)\n(add --help for usage)\n");
    const unknown = await runCli(["status", b, "-frob"]);
    expect(unknown.stderr).not.toMatch(/Did you mean/);
  });

  it("counts in the singular when there is one", async () => {
    const dir = tmpDir();
    const b = await backupWith(dir, 1);
    const r = await runCli(["restore", b, path.join(dir, "r.db")]);
    expect(r.stdout).toMatch(/: 1 change, 1 statement, /);
    expect((await runCli(["status", b])).stdout).toMatch(/restorable\s+version 1, /);
    expect((await runCli(["verify", b])).stdout).toMatch(/^ok: 1 record \(version 1\), 0 snapshots /);
  });
});
