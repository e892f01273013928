import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request, startDaemon, waitFor, type DaemonProcess } from "../helpers/daemon.js";
import { runCli, spawnCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";
import os from "node:os";
import { rows } from "../helpers/sqlite.js";

const change = (version: number, sql: string) => JSON.stringify({ version, transaction: [sql] });


describe("daemon HTTP API on the Unix socket", () => {
  let d: DaemonProcess;
  let dir: string;
  let tmp: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-daemon-"));
    tmp = path.join(dir, "tmp");
    fs.mkdirSync(tmp);
    d = await startDaemon(dir, {
      socket: "tidemark.sock",
      maxChangeBytes: 2048,
      rateLimit: { burst: 100, every: "1m" },
      tmpDir: "tmp",
      databases: [
        // Live only: the download of a version compaction dropped is refused below.
        { name: "main", backend: "data/main", retention: { for: 0 } },
        { name: "other_db-2", backend: "data/other" },
      ],
    });
  });
  afterAll(async () => {
    expect(await d.stop()).toBe(0);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("serves health on a socket only its owner can use", async () => {
    expect((fs.statSync(d.socket).mode & 0o777).toString(8)).toBe("600");
    const r = await request(d.socket, "GET", "/healthz");
    expect(r.status).toBe(200);
    expect(r.json()).toEqual({ status: "ok", databases: 2 });
  });

  it("acks a change only once it is durable, and refuses version-rule violations with 409", async () => {
    const ok = await request(d.socket, "POST", "/v1/dbs/main/changes", change(1, "CREATE TABLE t (x)"));
    expect(ok.status).toBe(200);
    expect(ok.json()).toEqual({ version: 1, action: "append" });
    expect((await runCli(["status", path.join(dir, "data/main"), "--json"])).stdout).toMatch(/"version": 1/);
    await request(d.socket, "POST", "/v1/dbs/main/changes", change(2, "INSERT INTO t VALUES (2)"));

    const gap = await request(d.socket, "POST", "/v1/dbs/main/changes", change(5, "INSERT INTO t VALUES (5)"));
    expect(gap.status).toBe(409);
    expect(gap.json()).toEqual({
      error: "change 5 does not follow the backup head 2: versions 3..4 are missing",
      code: "E_GAP",
      head: 2,
      hint: 'send the host database as a new base at its current version N: a change with a snapshot (ingest: {"version": N, "snapshot_path": "app.db"}; daemon: POST /v1/dbs/<db>/snapshot?version=N)',
    });
    const stale = await request(d.socket, "POST", "/v1/dbs/main/changes", change(1, "INSERT INTO t VALUES (1)"));
    expect(stale.status).toBe(409);
    expect(stale.json()).toMatchObject({ code: "E_STALE", head: 2, hint: "restore the host database; do not continue" });
    // Refusals are logged as warnings, naming the database and why.
    const refusals = () => d.logs().split("\n").filter((l) => l.includes('"msg":"request refused"'));
    await waitFor(() => refusals().length >= 2, 5_000, d.logs);
    const refused = refusals().map((l) => JSON.parse(l));
    expect(refused.map((l) => [l.level, l.db, l.status, l.code])).toEqual([
      [40, "main", 409, "E_GAP"],
      [40, "main", 409, "E_STALE"],
    ]);
    expect(refused[0].error).toMatch(/versions 3\.\.4 are missing/);
  });

  it.each([
    ["malformed JSON", "POST", "/v1/dbs/main/changes", "{version: 3", 400, "E_INPUT", /invalid JSON/],
    ["a malformed change", "POST", "/v1/dbs/main/changes", '{"version":3,"transaction":[{"sql":7}]}', 400, "E_INPUT", /change\.transaction\[0\]\.sql/],
    ["a snapshot_path over HTTP", "POST", "/v1/dbs/main/changes", '{"version":3,"snapshot_path":"/etc/passwd"}', 400, "E_INPUT", /snapshot_path: unknown field/],
    ["an unknown database", "POST", "/v1/dbs/nope/changes", change(1, "SELECT 1"), 404, "E_NOT_FOUND", /no database named "nope"/],
    ["a name with ../", "POST", "/v1/dbs/..%2F..%2Fetc/changes", change(1, "SELECT 1"), 400, "E_INPUT", /invalid database name/],
    ["a name with a dot", "GET", "/v1/dbs/main.db", undefined, 400, "E_INPUT", /invalid database name/],
    ["an oversized body", "POST", "/v1/dbs/main/changes", change(3, `INSERT INTO t VALUES ('${"x".repeat(3000)}')`), 413, "E_TOO_LARGE", /2048-byte limit/],
    ["the wrong method", "GET", "/v1/dbs/main/changes", undefined, 405, "E_INPUT", /use POST/],
    ["an unknown endpoint", "GET", "/v2/everything", undefined, 404, "E_NOT_FOUND", /no such endpoint/],
    ["a snapshot without a version", "POST", "/v1/dbs/main/snapshot", "SQLite format 3\0", 400, "E_INPUT", /version query parameter is required/],
    ["a snapshot that is not SQLite", "POST", "/v1/dbs/main/snapshot?version=9", "definitely not a database file", 400, "E_INPUT", /not a SQLite database/],
  ])("answers %s with a JSON %i and changes nothing", async (_name, method, url, body, status, code, message) => {
    const before = (await request(d.socket, "GET", "/v1/dbs/main")).json();
    const r = await request(d.socket, method, url, body);
    expect(r.status).toBe(status);
    expect(r.headers["content-type"]).toBe("application/json");
    expect(r.json().code).toBe(code);
    expect(r.json().error).toMatch(message);
    const after = (await request(d.socket, "GET", "/v1/dbs/main")).json();
    expect({ version: after.version, records: after.records, bytes: after.bytes }).toEqual({
      version: before.version,
      records: before.records,
      bytes: before.bytes,
    });
  });

  it("takes a streamed snapshot as a new base, and rewinds once", async () => {
    const src = path.join(dir, "snap.db");
    const db = new Database(src);
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES ('snap')");
    db.close();
    const r = await request(d.socket, "POST", "/v1/dbs/other_db-2/snapshot?version=10", fs.readFileSync(src));
    expect(r.status).toBe(200);
    expect(r.json()).toEqual({ version: 10, action: "new-base" });
    await request(d.socket, "POST", "/v1/dbs/other_db-2/changes", change(11, "INSERT INTO t VALUES ('eleven')"));
    const rw = await request(d.socket, "POST", "/v1/dbs/other_db-2/rewind");
    expect(rw.json()).toEqual({ version: 10 });
    const again = await request(d.socket, "POST", "/v1/dbs/other_db-2/rewind");
    expect(again.status).toBe(409);
    expect(again.json()).toMatchObject({ code: "E_REWIND", head: 10 });
    const s = (await request(d.socket, "GET", "/v1/dbs/other_db-2")).json();
    expect(s).toMatchObject({ name: "other_db-2", kind: "file", version: 10, prevVersion: null, baseVersion: 10 });
  });

  it("compacts on request and reports it in status", async () => {
    for (let v = 3; v <= 12; v++) await request(d.socket, "POST", "/v1/dbs/main/changes", change(v, `INSERT INTO t VALUES (${v})`));
    const r = await request(d.socket, "POST", "/v1/dbs/main/compact");
    expect(r.status).toBe(200);
    expect(r.json()).toMatchObject({ baseVersion: 11, before: { records: 12 }, after: { records: 2 } });
    const s = (await request(d.socket, "GET", "/v1/dbs/main")).json();
    expect(s.lastCompaction).toMatchObject({ baseVersion: 11, reason: "requested" });
    const list = (await request(d.socket, "GET", "/v1/dbs")).json();
    expect(list.databases.map((x: { name: string }) => x.name)).toEqual(["main", "other_db-2"]);
  });

  it("streams a restored database as a download and leaves no temp files", async () => {
    const r = await request(d.socket, "GET", "/v1/dbs/main/backup");
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/octet-stream");
    expect(r.headers["content-disposition"]).toBe('attachment; filename="main-12.db"');
    expect(r.headers["x-content-type-options"]).toBe("nosniff");
    const file = path.join(dir, "download.db");
    fs.writeFileSync(file, r.body);
    expect(rows(file)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    const older = await request(d.socket, "GET", "/v1/dbs/main/backup?version=11");
    expect(older.headers["content-disposition"]).toBe('attachment; filename="main-11.db"');
    const missing = await request(d.socket, "GET", "/v1/dbs/main/backup?version=3");
    expect(missing.status).toBe(404);
    expect(missing.json()).toMatchObject({ code: "E_RANGE" });
    expect(fs.readdirSync(tmp)).toEqual([]);
  });

  it("cleans up when the client disconnects mid-download", async () => {
    await new Promise<void>((resolve, reject) => {
      const req = http.request({ socketPath: d.socket, path: "/v1/dbs/main/backup", method: "GET" }, (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", () => {});
      req.on("close", () => resolve());
      req.setTimeout(5000, () => reject(new Error("no response")));
      req.end();
    });
    await waitFor(() => fs.readdirSync(tmp).length === 0, 5000);
  });

  it("verifies on request, with a test restore", async () => {
    const r = await request(d.socket, "POST", "/v1/dbs/main/verify");
    expect(r.status).toBe(200);
    expect(r.json()).toMatchObject({ ok: true, restored: { version: 12 }, problems: [] });
    const s = (await request(d.socket, "GET", "/v1/dbs/main")).json();
    expect(s.lastVerify).toMatchObject({ ok: true, problems: [] });
    expect(fs.readdirSync(tmp)).toEqual([]);
  });

  it("exports Prometheus metrics: tidemark's own prefixed tidemark_, Node's under their standard names", async () => {
    const r = await request(d.socket, "GET", "/metrics");
    expect(r.status).toBe(200);
    const text = r.body.toString();
    expect(text).toMatch(/^tidemark_ack_latency_seconds_bucket\{le="0\.001",db="main"\} \d+/m);
    expect(text).toMatch(/^tidemark_head_version\{db="main"\} 12$/m);
    expect(text).toMatch(/^tidemark_compactions_total\{db="main",result="ok"\} 1$/m);
    expect(text).toMatch(/^tidemark_errors_total\{db="main",code="E_GAP"\} 1$/m);
    // Refused before the database saw them (a body that is not JSON) or by it: each counted once.
    expect(text).toMatch(/^tidemark_errors_total\{db="main",code="E_INPUT"\} 6$/m);
    expect(text).toMatch(/^tidemark_errors_total\{db="main",code="E_TOO_LARGE"\} 1$/m);
    expect(text).toMatch(/^tidemark_bytes_written_total\{db="main"\} \d+/m);
    expect(text).toMatch(/^tidemark_verify_total\{db="main",result="ok"\} 1$/m);
    const names = [...text.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]!);
    expect(names.length).toBeGreaterThan(10);
    expect(names.filter((n) => !/^(tidemark|process|nodejs)_/.test(n))).toEqual([]);
    expect(names).toContain("process_cpu_seconds_total");
  });
});

describe("daemon on TCP", () => {
  it("requires the API key, compared in constant time, by header or bearer token", async () => {
    const dir = tmpDir();
    const d = await startDaemon(
      dir,
      { tcp: { port: 0, apiKey: "${TEST_KEY}" }, databases: [{ name: "default", backend: "data" }] },
      { TEST_KEY: "s3cret-key" },
    );
    try {
      const port = Number(/"tcp":"127\.0\.0\.1:(\d+)"/.exec(d.logs())![1]);
      expect((await request(port, "GET", "/healthz")).status).toBe(200);
      const none = await request(port, "GET", "/v1/dbs/default");
      expect(none.status).toBe(401);
      expect(none.json()).toMatchObject({ code: "E_AUTH" });
      expect((await request(port, "GET", "/v1/dbs/default", undefined, { "x-api-key": "wrong" })).status).toBe(401);
      expect((await request(port, "GET", "/v1/dbs/default", undefined, { "x-api-key": "s3cret-key" })).status).toBe(200);
      const bearer = await request(port, "POST", "/v1/dbs/default/changes", change(1, "CREATE TABLE t (x)"), {
        authorization: "Bearer s3cret-key",
      });
      expect(bearer.json()).toEqual({ version: 1, action: "append" });
      expect((await request(port, "GET", "/metrics")).status).toBe(401);
      expect(d.logs()).not.toContain("s3cret-key");
    } finally {
      await d.stop();
    }
  });

  it("refuses to start with TCP and no key", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "c.json"), JSON.stringify({ tcp: { port: 0 }, databases: [{ name: "a", backend: "data" }] }));
    const r = await runCli(["daemon", "--config", path.join(dir, "c.json")], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/Error: tcp\.apiKey: TCP is enabled but no API key is set/);
  });
});

describe("daemon socket handling", () => {
  it("refuses to remove a path that is not a socket", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "tidemark.sock"), "precious");
    const r = await runCli(["daemon"], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/tidemark\.sock exists and is not a socket; refusing to remove it/);
    expect(fs.readFileSync(path.join(dir, "tidemark.sock"), "utf8")).toBe("precious");
  });

  it("replaces a stale socket, and refuses one a live daemon answers on", async () => {
    const dir = tmpDir();
    const first = await startDaemon(dir, null);
    try {
      const second = await runCli(["daemon"], { cwd: dir });
      expect(second.code).toBe(1);
      expect(second.stderr).toMatch(/another daemon is listening on .*tidemark\.sock/);
    } finally {
      first.child.kill("SIGKILL");
      await new Promise((r) => first.child.on("exit", r));
    }
    // The SIGKILLed daemon left its socket behind.
    expect(fs.existsSync(path.join(dir, "tidemark.sock"))).toBe(true);
    const third = await startDaemon(dir, null);
    expect((await request(third.socket, "GET", "/healthz")).status).toBe(200);
    expect(await third.stop()).toBe(0);
  });
});

describe("daemon spool directory", () => {
  it("ingests files present at start-up in version order and deletes each once durable", async () => {
    const dir = tmpDir();
    const spool = path.join(dir, "tidemark-spool", "default");
    fs.mkdirSync(spool, { recursive: true });
    fs.writeFileSync(path.join(spool, "3.json"), change(3, "INSERT INTO t VALUES (3)"));
    fs.writeFileSync(path.join(spool, "1.json"), change(1, "CREATE TABLE t (x)"));
    fs.writeFileSync(path.join(spool, "2.json"), change(2, "INSERT INTO t VALUES (2)"));
    fs.writeFileSync(path.join(spool, ".4.json.tmp"), "half written");
    const d = await startDaemon(dir, null);
    try {
      await waitFor(() => fs.readdirSync(spool).filter((n) => n.endsWith(".json")).length === 0, 10_000, d.logs);
      expect(fs.readdirSync(spool)).toEqual([".4.json.tmp"]);
      // A host writing atomically, one change at a time.
      fs.writeFileSync(path.join(spool, ".4.json.tmp"), change(4, "INSERT INTO t VALUES (4)"));
      fs.renameSync(path.join(spool, ".4.json.tmp"), path.join(spool, "4.json"));
      await waitFor(() => !fs.existsSync(path.join(spool, "4.json")), 10_000, d.logs);
      const r = await request(d.socket, "GET", "/v1/dbs/default/backup");
      fs.writeFileSync(path.join(dir, "out.db"), r.body);
      expect(rows(path.join(dir, "out.db"))).toEqual([2, 3, 4]);
    } finally {
      await d.stop();
    }
  });

  it("moves a bad file to rejected/ with a reason, and carries on", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, null);
    const spool = path.join(dir, "tidemark-spool");
    try {
      fs.writeFileSync(path.join(spool, "default", "1.json"), "{not json");
      await waitFor(() => fs.readdirSync(path.join(spool, "rejected")).length === 2, 10_000, d.logs);
      const reason = fs.readdirSync(path.join(spool, "rejected")).find((n) => n.endsWith(".reason"))!;
      expect(fs.readFileSync(path.join(spool, "rejected", reason), "utf8")).toMatch(/^E_INPUT: invalid JSON/);
      expect(reason).toMatch(/^default\.1\.\d+\.json\.reason$/);

      fs.writeFileSync(path.join(spool, "default", "1.json"), change(1, "CREATE TABLE t (x)"));
      await waitFor(() => !fs.existsSync(path.join(spool, "default", "1.json")), 10_000, d.logs);
      fs.writeFileSync(path.join(spool, "default", "7.json"), change(2, "SELECT 1"));
      await waitFor(() => fs.readdirSync(path.join(spool, "rejected")).length === 4, 10_000, d.logs);
      const reasons = fs
        .readdirSync(path.join(spool, "rejected"))
        .filter((n) => n.endsWith(".reason"))
        .map((n) => fs.readFileSync(path.join(spool, "rejected", n), "utf8"));
      expect(reasons.join()).toMatch(/named 7\.json but holds version 2/);
      expect((await request(d.socket, "GET", "/v1/dbs/default")).json().version).toBe(1);
    } finally {
      await d.stop();
    }
  });
});

describe("daemon spool limits", () => {
  it("rejects a file over maxChangeBytes without loading it", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, { spool: "spool", maxChangeBytes: 1024, databases: [{ name: "default", backend: "data" }] });
    try {
      fs.writeFileSync(path.join(dir, "spool/default/1.json"), change(1, `SELECT '${"x".repeat(5000)}'`));
      await waitFor(() => fs.readdirSync(path.join(dir, "spool/rejected")).length === 2, 10_000, d.logs);
      const reason = fs.readdirSync(path.join(dir, "spool/rejected")).find((n) => n.endsWith(".reason"))!;
      expect(fs.readFileSync(path.join(dir, "spool/rejected", reason), "utf8")).toMatch(/^E_TOO_LARGE: the file is \d+ bytes, over the 1024-byte limit/);
    } finally {
      await d.stop();
    }
  });
});

describe("daemon validation interval", () => {
  it("runs verify with a test restore on schedule", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, { databases: [{ name: "db", backend: "data", validationInterval: "1s" }] });
    try {
      await request(d.socket, "POST", "/v1/dbs/db/changes", change(1, "CREATE TABLE t (x)"));
      await waitFor(async () => (await request(d.socket, "GET", "/v1/dbs/db")).json().lastVerify?.ok === true, 10_000, d.logs);
      await waitFor(() => d.logs().includes('"msg":"verify passed"'), 5_000, d.logs);
    } finally {
      await d.stop();
    }
  });
});

describe("daemon configuration reload", () => {
  it("adds and removes databases on a config change and on SIGHUP, and keeps running on a bad config", async () => {
    const dir = tmpDir();
    const config = { databases: [{ name: "one", backend: "data/one" }] };
    const d = await startDaemon(dir, config);
    try {
      expect((await request(d.socket, "POST", "/v1/dbs/one/changes", change(1, "CREATE TABLE t (x)"))).status).toBe(200);
      fs.writeFileSync(d.configFile!, JSON.stringify({ databases: [...config.databases, { name: "two", backend: "data/two" }] }));
      await waitFor(async () => (await request(d.socket, "GET", "/v1/dbs/two")).status === 200, 10_000, d.logs);

      fs.writeFileSync(d.configFile!, JSON.stringify({ databases: [{ name: "BAD NAME", backend: "x" }] }));
      await waitFor(() => d.logs().includes("new configuration rejected"), 10_000, d.logs);
      expect(d.logs()).toMatch(/databases\[0\]\.name/);
      expect((await request(d.socket, "GET", "/v1/dbs/two")).status).toBe(200);

      // Written without the watcher noticing a difference in time? SIGHUP reloads regardless.
      fs.writeFileSync(d.configFile!, JSON.stringify({ databases: [{ name: "two", backend: "data/two" }] }));
      d.child.kill("SIGHUP");
      await waitFor(async () => (await request(d.socket, "GET", "/v1/dbs/one")).status === 404, 10_000, d.logs);
      expect((await request(d.socket, "GET", "/v1/dbs/two")).status).toBe(200);
      // A removed database answers 404 at once and closes after its drain; the reload logs
      // "configuration reloaded" once every removed database is closed.
      await waitFor(() => d.logs().split('"msg":"configuration reloaded"').length - 1 >= 2, 10_000, d.logs);
      // The removed database's backup was closed cleanly: its lock is gone.
      expect(fs.existsSync(path.join(dir, "data/one/LOCK"))).toBe(false);
    } finally {
      await d.stop();
    }
  });
});

describe("daemon drain", () => {
  it("SIGTERM lets in-flight changes finish, keeps every acked one, and exits 0", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, null);
    await request(d.socket, "POST", "/v1/dbs/default/changes", change(1, "CREATE TABLE t (x)"));
    const acked: number[] = [];
    let stopped = false;
    const sender = (async () => {
      for (let v = 2; v < 100_000 && !stopped; v++) {
        try {
          const r = await request(d.socket, "POST", "/v1/dbs/default/changes", change(v, `INSERT INTO t VALUES (${v})`));
          if (r.status !== 200) break;
          acked.push(v);
        } catch {
          break; // the socket closed
        }
      }
    })();
    await waitFor(() => acked.length > 50);
    const code = await d.stop();
    stopped = true;
    await sender;
    expect(code).toBe(0);
    expect(d.logs()).toMatch(/"msg":"draining"/);
    expect(fs.existsSync(path.join(dir, "tidemark.sock"))).toBe(false);
    const out = path.join(dir, "out.db");
    const r = await runCli(["restore", path.join(dir, "tidemark-data/default"), out]);
    expect(r.code, r.stderr).toBe(0);
    const restored = rows(out) as number[];
    expect(restored.slice(0, acked.length)).toEqual(acked);
    expect(restored.length - acked.length).toBeLessThanOrEqual(1);
  });
});

describe("daemon start", () => {
  it("a SIGTERM while it starts, or just after it is ready, stops it cleanly: exit 0, the socket removed", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    expect((await runCli(["init", backup])).code).toBe(0);
    expect((await runCli(["ingest", backup], { input: `${change(1, "CREATE TABLE t (x)")}\n` })).code).toBe(0);
    fs.writeFileSync(path.join(dir, "c.json"), JSON.stringify({ databases: [{ name: "app", backend: "backup", restoreIfMissing: "app.db" }] }));
    // Mid-start: the restore is logged before the socket listens. Just after "ready": the config
    // watcher still loads (the window a test's quick stop once hit).
    for (const when of ["restored the missing database file before serving", '"msg":"ready"']) {
      fs.rmSync(path.join(dir, "app.db"), { force: true });
      const child = spawnCli(["daemon", "--config", "c.json"], { cwd: dir });
      let out = "";
      child.stdout!.on("data", (d) => (out += d));
      child.stderr!.on("data", (d) => (out += d));
      const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
      await waitFor(() => out.includes(when), 15_000, () => out);
      child.kill("SIGTERM");
      expect(await exited, `${when}:\n${out}`).toBe(0);
      expect(out).toMatch(/"msg":"stopping"/);
      expect(fs.existsSync(path.join(dir, "tidemark.sock"))).toBe(false);
      expect(rows(path.join(dir, "app.db"))).toEqual([]);
    }
  });
});

describe("daemon with a database whose key is missing or wrong", () => {
  it("serves the other databases; the broken one answers 503 naming the key, and nothing is written to it", async () => {
    const dir = tmpDir();
    const right = path.join(dir, "right.key");
    const wrong = path.join(dir, "wrong.key");
    fs.writeFileSync(right, "11".repeat(32));
    fs.writeFileSync(wrong, "22".repeat(32));
    const sealed = path.join(dir, "data/sealed");
    expect((await runCli(["init", sealed, "--key", `3=file:${right}`])).code).toBe(0);
    expect((await runCli(["ingest", sealed, "--key", `3=file:${right}`], { input: `${change(1, "CREATE TABLE t (x)")}\n` })).code).toBe(0);
    const before = fs.readdirSync(sealed).map((n) => [n, fs.readFileSync(path.join(sealed, n))] as const);

    const d = await startDaemon(dir, {
      databases: [
        { name: "plain", backend: "data/plain" },
        { name: "nokey", backend: "data/nokey", encryption: { keys: [{ id: 1, source: "env:TIDEMARK_TEST_UNSET_KEY" }] } },
        { name: "sealed", backend: "data/sealed", encryption: { keys: [{ id: 3, source: "file:wrong.key" }] } },
      ],
    });
    try {
      expect((await request(d.socket, "POST", "/v1/dbs/plain/changes", change(1, "CREATE TABLE t (x)"))).status).toBe(200);
      const nokey = await request(d.socket, "POST", "/v1/dbs/nokey/changes", change(1, "CREATE TABLE t (x)"));
      expect(nokey.status).toBe(503);
      expect(nokey.json().error).toMatch(/database nokey failed to open: .*environment variable TIDEMARK_TEST_UNSET_KEY is not set/);
      const sealedReply = await request(d.socket, "POST", "/v1/dbs/sealed/changes", change(2, "INSERT INTO t VALUES (2)"));
      expect(sealedReply.status).toBe(503);
      expect(sealedReply.json().error).toMatch(/key id 3 is not the key .* was written with under that id/);
      expect(d.logs()).not.toContain("22".repeat(32));
      // The failed open let go of the backup: the CLI can use it while the daemon runs.
      expect(fs.existsSync(path.join(sealed, "LOCK"))).toBe(false);
      expect((await request(d.socket, "POST", "/v1/dbs/plain/changes", change(2, "INSERT INTO t VALUES (2)"))).status).toBe(200);
      // The failed ones have series an alert can watch.
      const metrics = (await request(d.socket, "GET", "/metrics")).body.toString();
      expect(metrics).toMatch(/^tidemark_database_up\{db="plain"\} 1$/m);
      expect(metrics).toMatch(/^tidemark_database_up\{db="nokey"\} 0$/m);
      expect(metrics).toMatch(/^tidemark_database_up\{db="sealed"\} 0$/m);
      expect(metrics).toMatch(/^tidemark_errors_total\{db="nokey",code="E_CONFIG"\} 1$/m);
      expect(metrics).toMatch(/^tidemark_errors_total\{db="sealed",code="E_KEY"\} 1$/m);
      const ready = JSON.parse(d.logs().split("\n").find((l) => l.includes('"msg":"ready"'))!);
      expect([ready.databases, [...ready.failed].sort()]).toEqual([["plain"], ["nokey", "sealed"]]);
    } finally {
      expect(await d.stop()).toBe(0);
    }
    for (const [name, bytes] of before) expect(fs.readFileSync(path.join(sealed, name)).equals(bytes), name).toBe(true);
  });
});
