/**
 * The S3 backend against a real S3-compatible server (s3rver) on 127.0.0.1: crashes, a server
 * that stops mid-stream, clear errors, and copies between backends.
 */
import http from "node:http";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli, spawnCli } from "../helpers/cli.js";
import { runCrashScenario } from "../helpers/crash.js";
import { S3_RESTARTABLE, startS3, type S3Server } from "../helpers/s3.js";
import { expectSameDb, rows as rowsOf } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3.stop();
});

const lines = (...changes: object[]) => changes.map((c) => JSON.stringify(c)).join("\n") + "\n";
const insert = (v: number) => ({ version: v, transaction: [{ sql: "INSERT INTO t VALUES (?, ?)", params: [{ $bigint: String(v) }, `row ${v}`] }] });

const rows = (file: string): unknown[] => rowsOf(file, "SELECT b FROM t ORDER BY a");

describe("S3 backend: crashes", () => {
  it("kills during ingest, rewind, compact and restore lose nothing acked and replay nothing rewound", async () => {
    const dir = tmpDir();
    const prefix = `crash-${Date.now()}`;
    const location = s3.location(prefix);
    expect((await runCli(["init", location])).code).toBe(0);
    const report = await runCrashScenario(
      dir,
      {
        location,
        lockHeld: () => s3.has(`${prefix}/lease.json`),
        leftovers: async () => (await s3.keys(prefix)).filter((k) => k.includes("lease") || k.includes(".probe-")),
      },
      30,
    );
    console.log(`s3 crash test: ${JSON.stringify(report)}`);
  });
});

describe("S3 backend: the server goes away", () => {
  it.runIf(S3_RESTARTABLE)("an ingest fails clearly while the server is down, and resumes with nothing lost once it is back", async () => {
    const dir = tmpDir();
    const location = `${s3.location()}&attempts=3`;
    await runCli(["init", location]);
    const first = await runCli(["ingest", location], {
      input: lines({ version: 1, transaction: ["CREATE TABLE t (a INTEGER, b TEXT)"] }, ...[2, 3, 4, 5].map(insert)),
    });
    expect(first.code, first.stderr).toBe(0);

    // An ingest that is running when the server dies.
    const child = spawnCli(["ingest", location]);
    let out = "";
    let err = "";
    child.stdout!.on("data", (d) => (out += d));
    child.stderr!.on("data", (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    child.stdin!.write(lines(insert(6)));
    while (!out.includes('"version":6')) await new Promise((r) => setTimeout(r, 10));
    await s3.kill();
    child.stdin!.write(lines(insert(7)));
    child.stdin!.end();
    const code = await exited;
    await s3.start();
    expect(code).toBe(1);
    expect(err).toMatch(/^Error: line 2: \[s3\] put s3:\/\/tidemark-test\/.*log\/\d{10}\/\d{10}\.tml: .*ECONNREFUSED/m);
    expect(err).toMatch(/^Try: the store did not answer after 3 attempts; nothing acknowledged was lost/m);

    const resumed = await runCli(["ingest", location], { input: lines(insert(7), insert(8)) });
    expect(resumed.code, resumed.stderr).toBe(0);
    const restore = await runCli(["restore", location, path.join(dir, "out.db")]);
    expect(restore.code, restore.stderr).toBe(0);
    expect(rows(path.join(dir, "out.db"))).toEqual(["row 2", "row 3", "row 4", "row 5", "row 6", "row 7", "row 8"]);
  });
});

describe("S3 backend: errors name the bucket and key, never the credentials", () => {
  it("a bucket that does not exist", async () => {
    const r = await runCli(["status", s3.location().replace("tidemark-test", "no-such-bucket")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^Error: \[s3\] get s3:\/\/no-such-bucket\/.*tidemark\.json: 404 NoSuchBucket/m);
    expect(r.stderr).toMatch(/^Try: create the bucket no-such-bucket, or fix the URL/m);
  });

  it("wrong credentials", async () => {
    const r = await runCli(["status", s3.location()], { env: { AWS_ACCESS_KEY_ID: "AKIAWRONGWRONG", AWS_SECRET_ACCESS_KEY: "very-secret-value" } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^Error: \[s3\] get s3:\/\/tidemark-test\/.*: 403 /m);
    expect(r.stderr).toMatch(/^Try: check the credentials/m);
    expect(r.stderr).not.toContain("very-secret-value");
  });

  it("the wrong region, answered the way S3 answers it", async () => {
    // A stand-in endpoint that answers like S3 does for a bucket in another region.
    const server = http.createServer((_req, res) => {
      res.writeHead(301, { "content-type": "application/xml", "x-amz-bucket-region": "eu-west-2" });
      res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error>');
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const port = (server.address() as { port: number }).port;
    try {
      const r = await runCli(["status", `s3://bucket/x?endpoint=http://127.0.0.1:${port}&region=us-east-1`]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^Error: \[s3\] get s3:\/\/bucket\/x\/tidemark\.json: 301 /m);
      expect(r.stderr).toMatch(/^Try: the bucket is in eu-west-2: add \?region=eu-west-2 to the URL/m);
    } finally {
      server.close();
    }
  });

  it("no credentials at all: one line naming the variables, E_CONFIG, without a long wait for an instance role", async () => {
    const home = tmpDir();
    const none = { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SESSION_TOKEN: undefined, AWS_PROFILE: undefined, HOME: home, AWS_CONFIG_FILE: path.join(home, "none"), AWS_SHARED_CREDENTIALS_FILE: path.join(home, "none") };
    const r = await runCli(["status", s3.location()], { env: none });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(2);
    expect(r.stderr).toMatch(/^Error: \[s3\] get s3:\/\/tidemark-test\/.*tidemark\.json: no AWS credentials found$/m);
    expect(r.stderr).toMatch(/^Try: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE/m);
  });

  it("a read-only command that cannot reach the store does not speak of acknowledged changes", async () => {
    const r = await runCli(["status", "s3://bucket/x?endpoint=http://127.0.0.1:9&attempts=1"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^Try: the store did not answer after 1 attempts: retry once it is reachable$/m);
    expect(r.stderr).not.toMatch(/acknowledged/);
  });

  it("credentials in the URL are refused without echoing them", async () => {
    const r = await runCli(["status", "s3://AKIA:topsecret@bucket/prefix"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/credentials do not go in the URL/);
    expect(r.stderr).not.toContain("topsecret");
  });
});

describe("tidemark copy", () => {
  it("moves a backup file -> S3 -> file, and every copy restores identically", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "src");
    const host = path.join(dir, "host.db");
    const db = new Database(host);
    db.exec("CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (0, 'seed')");
    db.close();
    await runCli(["init", src, "--from-db", host, "--version", "10"]);
    const changes = [11, 12, 13, 14, 15].map(insert);
    await runCli(["ingest", src], { input: lines(...changes) });
    await runCli(["compact", src]);
    await runCli(["ingest", src], { input: lines(insert(16)) });
    await runCli(["rewind", src]);

    const remote = s3.location();
    const toS3 = await runCli(["copy", src, remote, "--json"]);
    expect(toS3.code, toS3.stderr).toBe(0);
    expect(JSON.parse(toS3.stdout)).toMatchObject({ version: 15 });
    const back = path.join(dir, "back");
    const toFile = await runCli(["copy", remote, back]);
    expect(toFile.code, toFile.stderr).toBe(0);

    for (const [name, loc] of [["src", src], ["s3", remote], ["back", back]] as const) {
      const r = await runCli(["restore", loc, path.join(dir, `${name}.db`)]);
      expect(r.code, r.stderr).toBe(0);
      const status = JSON.parse((await runCli(["status", loc, "--json"])).stdout);
      expect(status).toMatchObject({ version: 15, prevVersion: null });
    }
    expectSameDb(path.join(dir, "s3.db"), path.join(dir, "src.db"));
    expectSameDb(path.join(dir, "back.db"), path.join(dir, "src.db"));
    expect(rows(path.join(dir, "back.db"))).toEqual(["seed", "row 11", "row 12", "row 13", "row 14", "row 15"]);

    const again = await runCli(["copy", src, remote]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already holds changes \(head 15\); copy never merges/);
    expect(again.stderr).toMatch(/Try: .*--force/);
    const forced = await runCli(["copy", back, remote, "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
  });
});
