/**
 * The version rules at the daemon's doors (HTTP and the spool), against a real daemon child:
 * racing changes for one version, retries, numbers JSON cannot carry, timestamps that go
 * back, and SQL that replays to a different database.
 */
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request, startDaemon, waitFor, type DaemonProcess, type Reply } from "../helpers/daemon.js";
import { runCli } from "../helpers/cli.js";
import os from "node:os";

const change = (version: number, sql: string, extra: object = {}) => JSON.stringify({ version, transaction: [sql], ...extra });

/**
 * POSTs all bodies at once: each request is sent but its last byte, and once every one is
 * under way the last bytes go out together, so that the daemon holds all of them at once.
 */
async function postTogether(socket: string, urlPath: string, bodies: string[]): Promise<Reply[]> {
  const started: (() => void)[] = [];
  const replies = bodies.map(
    (body) =>
      new Promise<Reply>((resolve, reject) => {
        const req = http.request({ method: "POST", path: urlPath, socketPath: socket, headers: { "content-length": String(Buffer.byteLength(body)) } }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const buf = Buffer.concat(chunks);
            resolve({ status: res.statusCode!, headers: res.headers, body: buf, json: () => JSON.parse(buf.toString("utf8")) });
          });
        });
        req.on("error", reject);
        req.write(body.slice(0, -1));
        started.push(() => req.end(body.slice(-1)));
      }),
  );
  await new Promise((r) => setTimeout(r, 200));
  for (const end of started) end();
  return Promise.all(replies);
}

function restoredRows(dir: string, body: Buffer, sql = "SELECT x FROM t ORDER BY rowid"): unknown[] {
  const file = path.join(dir, `out-${Math.random().toString(36).slice(2)}.db`);
  fs.writeFileSync(file, body);
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).pluck().all();
  } finally {
    db.close();
  }
}

describe("daemon: version rules at the doors", () => {
  let d: DaemonProcess;
  let dir: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-doors-"));
    d = await startDaemon(dir, {
      socket: "tidemark.sock",
      spool: "spool",
      rateLimit: { burst: 100, every: "1m" },
      databases: [
        { name: "main", backend: "data/main" },
        { name: "lax", backend: "data/lax", allowNondeterministic: true },
        { name: "cln", backend: "data/cln", rules: "core-lightning" },
      ],
    });
  });
  afterAll(async () => {
    expect(await d.stop()).toBe(0);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const post = (db: string, body: string) => request(d.socket, "POST", `/v1/dbs/${db}/changes`, body);
  const head = async (db: string): Promise<number> => (await request(d.socket, "GET", `/v1/dbs/${db}`)).json().version;

  it("six different changes for one version at once: one is acknowledged, five get 409 E_CONFLICT, and the backup holds the acked one", async () => {
    expect((await post("main", change(1, "CREATE TABLE t (x)"))).status).toBe(200);
    const replies = await postTogether(
      d.socket,
      "/v1/dbs/main/changes",
      [1, 2, 3, 4, 5, 6].map((i) => change(2, `INSERT INTO t VALUES (${i})`)),
    );
    const ok = replies.filter((r) => r.status === 200);
    const conflicts = replies.filter((r) => r.status === 409);
    expect(ok).toHaveLength(1);
    expect(conflicts).toHaveLength(5);
    for (const r of conflicts) {
      expect(r.json().code).toBe("E_CONFLICT");
      expect(r.json().hint).toMatch(/acknowledged/);
    }
    const acked = replies.indexOf(ok[0]!) + 1;
    expect(ok[0]!.json()).toEqual({ version: 2, action: "append" });
    const backup = await request(d.socket, "GET", "/v1/dbs/main/backup");
    expect(backup.status).toBe(200);
    expect(restoredRows(dir, backup.body)).toEqual([acked]);
  });

  it("a retry identical to its original, in flight or after the ack, is acknowledged again and stores nothing more", async () => {
    const body = change(3, "INSERT INTO t VALUES ('retried')");
    const [a, b] = await postTogether(d.socket, "/v1/dbs/main/changes", [body, body]);
    expect([a!.status, b!.status]).toEqual([200, 200]);
    expect([a!.json().action, b!.json().action].sort()).toEqual(["append", "unchanged"]);
    const log = path.join(dir, "data/main/log-0000000001.tml");
    const size = fs.statSync(log).size;
    const again = await post("main", body);
    expect(again.json()).toEqual({ version: 3, action: "unchanged" });
    expect(fs.statSync(log).size).toBe(size);
    // A different change for the head version after the ack is a redo (the host died before its commit).
    const redo = await post("main", change(3, "INSERT INTO t VALUES ('redone')"));
    expect(redo.json()).toEqual({ version: 3, action: "rewind-then-append" });
    const status = JSON.parse((await runCli(["status", path.join(dir, "data/main"), "--json"])).stdout);
    expect(status.version).toBe(3);
    expect(restoredRows(dir, (await request(d.socket, "GET", "/v1/dbs/main/backup")).body).slice(-1)).toEqual(["redone"]);
  });

  it("refuses numbers JSON does not carry exactly: 2e0 and 2^60 as a version, 1e400 and 2^60 + 1 as parameters", async () => {
    const version = await head("main");
    const cases: [string, RegExp][] = [
      ['{"version":4e0,"transaction":["INSERT INTO t VALUES (4)"]}', /change\.version: expected an integer written without a fraction or exponent, got 4e0/],
      ['{"version":1152921504606846976,"transaction":["INSERT INTO t VALUES (4)"]}', /change\.version: 1152921504606846976 is larger than 9007199254740991/],
      ['{"version":4,"transaction":[{"sql":"INSERT INTO t VALUES (?)","params":[1e400]}]}', /change\.transaction\[0\]\.params\[0\]: 1e400 is not a finite number/],
      ['{"version":4,"transaction":[{"sql":"INSERT INTO t VALUES (?)","params":[1152921504606846977]}]}', /1152921504606846977 does not fit in a JSON number exactly/],
      ['{"version":4,"timestamp":17e11,"transaction":["INSERT INTO t VALUES (4)"]}', /change\.timestamp: expected an integer written without/],
    ];
    for (const [body, message] of cases) {
      const r = await post("main", body);
      expect(r.status, body).toBe(400);
      expect(r.json().code).toBe("E_INPUT");
      expect(r.json().error).toMatch(message);
    }
    expect(await head("main")).toBe(version);
    // A fraction is fine where a number binds as REAL; the big integer goes as $bigint.
    const ok = await post("main", '{"version":4,"transaction":[{"sql":"INSERT INTO t VALUES (?), (?)","params":[2.5, {"$bigint":"1152921504606846977"}]}]}');
    expect(ok.status).toBe(200);
    const rows = restoredRows(dir, (await request(d.socket, "GET", "/v1/dbs/main/backup")).body, "SELECT CAST(x AS TEXT) FROM t ORDER BY rowid");
    expect(rows.slice(-2)).toEqual(["2.5", "1152921504606846977"]);
  });

  it("a timestamp before the head's is stored as the head's, and the ack says so", async () => {
    const t = Date.parse("2030-01-01T00:00:00Z");
    expect((await post("main", change(5, "INSERT INTO t VALUES (5)", { timestamp: t }))).json()).toEqual({ version: 5, action: "append" });
    const back = await post("main", change(6, "INSERT INTO t VALUES (6)", { timestamp: t - 60_000 }));
    expect(back.status).toBe(200);
    expect(back.json()).toEqual({ version: 6, action: "append", timestampClampedTo: t });
    const status = JSON.parse((await runCli(["status", path.join(dir, "data/main"), "--json"])).stdout);
    expect(status.headTimestamp).toBe(t);
  });

  it("refuses SQL that reads the clock or random numbers with E_NONDETERMINISTIC, unless the database opts out", async () => {
    const version = await head("main");
    for (const sql of ["INSERT INTO t VALUES (random())", "INSERT INTO t VALUES (datetime('now'))", "INSERT INTO t VALUES (CURRENT_TIMESTAMP)"]) {
      const r = await post("main", change(version + 1, sql));
      expect(r.status, sql).toBe(400);
      expect(r.json().code).toBe("E_NONDETERMINISTIC");
      expect(r.json().hint).toMatch(/parameter/);
    }
    expect(await head("main")).toBe(version);
    expect((await post("lax", change(1, "CREATE TABLE t (x DEFAULT (random()))"))).status).toBe(200);
    expect((await post("lax", change(2, "INSERT INTO t VALUES (datetime('now'))"))).status).toBe(200);
    // rules: core-lightning accepts lightningd's own SQL (its migrations use strftime('%s', 'now')).
    expect((await post("cln", change(1, "CREATE TABLE invoices (paid_timestamp INTEGER)"))).status).toBe(200);
    expect((await post("cln", change(2, "UPDATE invoices SET paid_timestamp = strftime('%s', 'now')"))).status).toBe(200);
  });

  it("the spool refuses the same: a non-deterministic change and a 2e0 version go to rejected/ with their reason", async () => {
    const spool = path.join(dir, "spool");
    const rejected = path.join(spool, "rejected");
    const version = await head("main");
    fs.writeFileSync(path.join(spool, "main", `${version + 1}.json`), change(version + 1, "INSERT INTO t VALUES (random())"));
    await waitFor(() => fs.existsSync(rejected) && fs.readdirSync(rejected).filter((n) => n.endsWith(".reason")).length === 1, 10_000, d.logs);
    fs.writeFileSync(path.join(spool, "main", `${version + 2}.json`), `{"version":${version + 1}e0,"transaction":["INSERT INTO t VALUES (1)"]}`);
    await waitFor(() => fs.readdirSync(rejected).filter((n) => n.endsWith(".reason")).length === 2, 10_000, d.logs);
    const reasons = fs
      .readdirSync(rejected)
      .filter((n) => n.endsWith(".reason"))
      .map((n) => fs.readFileSync(path.join(rejected, n), "utf8"))
      .sort();
    expect(reasons[0]).toMatch(/^E_INPUT: .*change\.version: expected an integer written without a fraction or exponent/);
    expect(reasons[1]).toMatch(/^E_NONDETERMINISTIC: random\(\)/);
    expect(await head("main")).toBe(version);
  });
});
