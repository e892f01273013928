import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { request, startDaemon, waitFor, type DaemonProcess } from "../helpers/daemon.js";
import { expectSameDb, rows } from "../helpers/sqlite.js";
import { fileSizes, tmpDir } from "../helpers/tmp.js";

const change = (version: number, ...sql: string[]) => JSON.stringify({ version, transaction: sql });



async function download(d: DaemonProcess, out: string): Promise<string> {
  const r = await request(d.socket, "GET", "/v1/dbs/default/backup");
  expect(r.status, r.body.toString()).toBe(200);
  fs.writeFileSync(out, r.body);
  return out;
}

async function post(d: DaemonProcess, version: number, ...sql: string[]): Promise<{ status: number; body: any }> {
  const r = await request(d.socket, "POST", "/v1/dbs/default/changes", change(version, ...sql));
  return { status: r.status, body: r.json() };
}

describe("daemon: a change is checked against the shadow before the ack", () => {
  it("refuses statements that cannot apply with 409 E_REPLAY, over HTTP and the spool; nothing is stored and the next good change is taken", async () => {
    const dir = tmpDir();
    const env = { TIDEMARK_SHADOW_DIR: path.join(dir, "shadows") };
    const d = await startDaemon(dir, null, env);
    const data = path.join(dir, "tidemark-data/default");
    try {
      expect((await post(d, 1, "CREATE TABLE t (x)")).status).toBe(200);
      expect((await post(d, 2, "INSERT INTO t VALUES (2)")).status).toBe(200);
      const before = fileSizes(data);
      const bad = await post(d, 3, "INSERT INTO t VALUES (3)", "INSERT INTO nosuchtable VALUES (1)");
      expect(bad.status).toBe(409);
      expect(bad.body.code).toBe("E_REPLAY");
      expect(bad.body.error).toMatch(/^change 3, statement 1 cannot apply to the backup's state: no such table: nosuchtable: INSERT INTO nosuchtable VALUES \(1\)$/);
      const notSql = await post(d, 3, "THIS IS NOT SQL");
      expect(notSql.status).toBe(409);
      expect(notSql.body).toMatchObject({ code: "E_REPLAY", head: 2 });
      expect(notSql.body.error).toMatch(/statement 0 .*syntax error/);
      expect(fileSizes(data)).toEqual(before);

      const spool = path.join(dir, "tidemark-spool");
      fs.writeFileSync(path.join(spool, "default", "3.json"), change(3, "UPDATE nosuchtable SET x = 1"));
      await waitFor(() => fs.readdirSync(path.join(spool, "rejected")).some((n) => n.endsWith(".reason")), 10_000, d.logs);
      const reason = fs.readdirSync(path.join(spool, "rejected")).find((n) => n.endsWith(".reason"))!;
      expect(fs.readFileSync(path.join(spool, "rejected", reason), "utf8")).toMatch(/^E_REPLAY: change 3, statement 0 cannot apply .*no such table: nosuchtable/);
      expect(fileSizes(data)).toEqual(before);

      // The backup still restores, row by row, to the last good version; a good change follows.
      expect(rows(await download(d, path.join(dir, "at2.db")))).toEqual([2]);
      expect((await post(d, 3, "INSERT INTO t VALUES (3)")).status).toBe(200);
      expect(rows(await download(d, path.join(dir, "at3.db")))).toEqual([2, 3]);
    } finally {
      await d.stop();
    }
  });

  it("a redo of a version refused, then taken, then redone stays exact: the rewound change is gone from the shadow too", async () => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    const d = await startDaemon(dir, null, { TIDEMARK_SHADOW_DIR: shadows });
    try {
      expect((await post(d, 1, "CREATE TABLE t (x UNIQUE)")).status).toBe(200);
      expect((await post(d, 2, "INSERT INTO t VALUES (70)")).status).toBe(200);
      // A refused redo leaves version 2 in place, in the backup and in the shadow.
      expect((await post(d, 2, "INSERT INTO t VALUES (71)", "BOGUS")).body.code).toBe("E_REPLAY");
      expect((await post(d, 2, "INSERT INTO t VALUES (71)")).body).toEqual({ version: 2, action: "rewind-then-append" });
      // Would fail (UNIQUE) if 71 had been applied twice, or pass wrongly if 70 were still there.
      expect((await post(d, 3, "INSERT INTO t VALUES (70)")).status).toBe(200);
      expect((await post(d, 4, "INSERT INTO t VALUES (71)")).body.code).toBe("E_REPLAY");
      expect((await post(d, 4, "INSERT INTO t SELECT max(x) + 1 FROM t")).status).toBe(200);
      expect(rows(await download(d, path.join(dir, "out.db")))).toEqual([71, 70, 72]);
    } finally {
      await d.stop();
    }
    const [shadow] = fs.readdirSync(shadows).filter((n) => n.endsWith(".db"));
    expectSameDb(path.join(dir, "out.db"), path.join(shadows, shadow!));
  });

  it("after a SIGKILL, the shadow is rebuilt at the next change: it checks against the whole state and equals the restore", async () => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    const env = { TIDEMARK_SHADOW_DIR: shadows };
    let d = await startDaemon(dir, null, env);
    expect((await post(d, 1, "CREATE TABLE t (x)")).status).toBe(200);
    expect((await post(d, 2, "INSERT INTO t VALUES (2)", "CREATE TABLE u (y)")).status).toBe(200);
    d.child.kill("SIGKILL");
    await new Promise((r) => d.child.once("exit", r));
    expect(fs.readdirSync(shadows).filter((n) => n.endsWith(".clean"))).toEqual([]);
    d = await startDaemon(dir, null, env);
    try {
      // Only a shadow rebuilt from the backup knows table u; a refused change proves it checks.
      expect((await post(d, 3, "INSERT INTO u VALUES (3)")).status).toBe(200);
      expect((await post(d, 4, "INSERT INTO v VALUES (4)")).body.code).toBe("E_REPLAY");
      expect((await post(d, 4, "INSERT INTO t VALUES (4)")).status).toBe(200);
      await download(d, path.join(dir, "out.db"));
      expect(rows(path.join(dir, "out.db"))).toEqual([2, 4]);
    } finally {
      expect(await d.stop()).toBe(0);
    }
    const [shadow] = fs.readdirSync(shadows).filter((n) => n.endsWith(".db"));
    expect(fs.existsSync(path.join(shadows, `${shadow}.clean`))).toBe(true);
    expectSameDb(path.join(dir, "out.db"), path.join(shadows, shadow!));
  });

  it("refuses a snapshot with random bytes after a valid header (400 E_INPUT), leaving no blob behind", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, null, { TIDEMARK_SHADOW_DIR: path.join(dir, "shadows") });
    const data = path.join(dir, "tidemark-data/default");
    try {
      expect((await post(d, 1, "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)")).status).toBe(200);
      const before = fileSizes(data);
      const junk = Buffer.concat([Buffer.from("SQLite format 3\0", "latin1"), Buffer.from(Array.from({ length: 8176 }, (_, i) => (i * 7919 + 13) % 256))]);
      const r = await request(d.socket, "POST", "/v1/dbs/default/snapshot?version=9", junk);
      expect(r.status).toBe(400);
      expect(r.json().code).toBe("E_INPUT");
      expect(r.json().error).toMatch(/^snapshot of version 9: /);
      // A file cut short: its header says more pages than it has.
      const src = path.join(dir, "src.db");
      const db = new Database(src);
      db.exec("CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t SELECT i FROM n");
      db.close();
      const whole = fs.readFileSync(src);
      const cut = await request(d.socket, "POST", "/v1/dbs/default/snapshot?version=9", whole.subarray(0, 4096));
      expect(cut.status).toBe(400);
      expect(cut.json().error).toMatch(new RegExp(`^snapshot of version 9: header says ${whole.length / 4096} pages of 4096 bytes = ${whole.length}, file has 4096$`));
      expect(fileSizes(data)).toEqual(before);
      expect(fs.readdirSync(path.join(dir, "shadows", "tmp"))).toEqual([]);
      // A whole one is taken, and becomes the state changes are checked against.
      expect((await request(d.socket, "POST", "/v1/dbs/default/snapshot?version=9", whole)).status).toBe(200);
      expect((await post(d, 10, "DELETE FROM t WHERE x > 3")).status).toBe(200);
      expect(rows(await download(d, path.join(dir, "out.db")))).toEqual([1, 2, 3]);
    } finally {
      await d.stop();
    }
  });

  it("compacts from the shadow, without a replay, and the result restores row by row", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, null, { TIDEMARK_SHADOW_DIR: path.join(dir, "shadows") });
    try {
      expect((await post(d, 1, "CREATE TABLE t (x)")).status).toBe(200);
      for (let v = 2; v <= 30; v++) expect((await post(d, v, `INSERT INTO t VALUES (${v})`)).status).toBe(200);
      const r = await request(d.socket, "POST", "/v1/dbs/default/compact");
      expect(r.status, r.body.toString()).toBe(200);
      expect(r.json()).toMatchObject({ baseVersion: 29, replayMs: 0 });
      expect((await post(d, 31, "INSERT INTO t VALUES (31)")).status).toBe(200);
      const out = await download(d, path.join(dir, "out.db"));
      expect(rows(out)).toEqual(Array.from({ length: 30 }, (_, i) => i + 2));
      // The base is a rollback-journal file, as a replayed one would be.
      expect(fs.readFileSync(out).subarray(18, 20)).toEqual(Buffer.from([1, 1]));
      // The redo of the head still works after the compaction.
      expect((await post(d, 31, "INSERT INTO t VALUES (-31)")).body.action).toBe("rewind-then-append");
      expect(rows(await download(d, path.join(dir, "out2.db"))).at(-1)).toBe(-31);
    } finally {
      await d.stop();
    }
  });
});
