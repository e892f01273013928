import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import type { TidemarkError } from "../../src/util/errors.js";
import { Journal, backendSink } from "../../src/host/journal.js";
import { applyChange, closeShadow, shadowOf } from "../../src/ops/ingest.js";
import { MAX_OPEN_SHADOWS } from "../../src/ops/shadow.js";
import { restore } from "../../src/ops/restore.js";
import { runCli } from "../helpers/cli.js";
import { expectSameDb, rows } from "../helpers/sqlite.js";
import { mountSmallDisk } from "../helpers/small-disk.js";
import { tmpDir } from "../helpers/tmp.js";
import { FakeLightningd } from "../fixtures/cln/fake-lightningd.js";


/** Restores the backup at `location` into `out` and returns its rows. */
async function restoredRows(location: string, out: string): Promise<unknown[]> {
  const r = await openBackend(location, { mode: "read" });
  try {
    await restore(r, out);
  } finally {
    await r.close();
  }
  return rows(out);
}

const line = (version: number, ...sql: string[]) => `${JSON.stringify({ version, transaction: sql })}\n`;

describe("a change is checked against the backup's state before it is stored", () => {
  it("ingest exits 1 on a statement that cannot apply, naming it; the backup restores to the last good version; the next good change is taken", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    expect((await runCli(["init", backup])).code).toBe(0);
    const first = await runCli(["ingest", backup], { input: line(1, "CREATE TABLE t (x)") + line(2, "INSERT INTO t VALUES (2)") + line(3, "INSERT INTO nosuchtable VALUES (3)") + line(4, "INSERT INTO t VALUES (4)") });
    expect(first.code).toBe(1);
    expect(first.stderr).toMatch(/line 3: change 3, statement 0 cannot apply to the backup's state: no such table: nosuchtable: INSERT INTO nosuchtable VALUES \(3\)/);
    const notSql = await runCli(["ingest", backup], { input: line(3, "THIS IS NOT SQL") });
    expect(notSql.code).toBe(1);
    expect(notSql.stderr).toMatch(/change 3, statement 0 cannot apply .*syntax error/);
    const status = JSON.parse((await runCli(["status", backup, "--json"])).stdout);
    expect(status.version).toBe(2);
    const r2 = await runCli(["restore", backup, path.join(dir, "at2.db")]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(rows(path.join(dir, "at2.db"))).toEqual([2]);
    // A later process checks against the state the earlier one left (its shadow resyncs).
    const good = await runCli(["ingest", backup], { input: line(3, "INSERT INTO t VALUES (3)") + line(4, "INSERT INTO t SELECT x + 1 FROM t WHERE x = 3") });
    expect(good.code, good.stderr).toBe(0);
    expect((await runCli(["restore", backup, path.join(dir, "at4.db")])).code).toBe(0);
    expect(rows(path.join(dir, "at4.db"))).toEqual([2, 3, 4]);
  });

  it("ingest refuses a snapshot_path with random bytes after a valid header, and one cut short, storing nothing", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    expect((await runCli(["init", backup])).code).toBe(0);
    expect((await runCli(["ingest", backup], { input: line(1, "CREATE TABLE t (x)") })).code).toBe(0);
    const junk = path.join(dir, "junk.db");
    fs.writeFileSync(junk, Buffer.concat([Buffer.from("SQLite format 3\0", "latin1"), Buffer.from(Array.from({ length: 4080 }, (_, i) => (i * 31 + 7) % 256))]));
    const r = await runCli(["ingest", backup], { input: `${JSON.stringify({ version: 5, snapshot_path: junk })}\n` });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/snapshot of version 5: /);
    const src = path.join(dir, "src.db");
    const db = new Database(src);
    db.exec("CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO t SELECT i FROM n");
    db.close();
    const size = fs.statSync(src).size;
    fs.truncateSync(src, size - 4096);
    const cut = await runCli(["ingest", backup], { input: `${JSON.stringify({ version: 5, snapshot_path: src })}\n` });
    expect(cut.code).toBe(1);
    expect(cut.stderr).toContain(`snapshot of version 5: header says ${size / 4096} pages of 4096 bytes = ${size}, file has ${size - 4096}`);
    expect(JSON.parse((await runCli(["status", backup, "--json"])).stdout)).toMatchObject({ version: 1, records: 1 });
    // The snapshot streams into its blob as it is spooled: a refused one leaves no blob, not even a temp file.
    expect(fs.readdirSync(backup).filter((n) => n.startsWith("snap-"))).toEqual([]);
  });

  it("a snapshot whose own transaction cannot apply is refused with E_REPLAY and leaves no blob; a sound one is stored once and restores row by row", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "src.db");
    const db = new Database(src);
    db.exec("CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO t SELECT i FROM n");
    db.close();
    const location = path.join(dir, "backup");
    const opts = { shadow: { dir: path.join(dir, "shadows") } };
    const b = await openBackend(location, { mode: "create" });
    try {
      const bad = await applyChange(b, { version: 1, snapshot: fs.createReadStream(src), transaction: ["INSERT INTO nosuchtable VALUES (1)"] }, opts).catch((e: unknown) => e);
      expect((bad as TidemarkError).code).toBe("E_REPLAY");
      expect(b.head().version).toBe(0);
      expect(fs.readdirSync(location).filter((n) => n.startsWith("snap-"))).toEqual([]);
      expect(fs.readdirSync(path.join(dir, "shadows", "tmp"))).toEqual([]);
      await applyChange(b, { version: 1, snapshot: fs.createReadStream(src), transaction: ["INSERT INTO t VALUES (3001)"] }, opts);
      await applyChange(b, { version: 2, transaction: ["INSERT INTO t VALUES (3002)"] }, opts);
      expect(fs.readdirSync(location).filter((n) => n.startsWith("snap-"))).toHaveLength(1);
      expect(fs.readdirSync(path.join(dir, "shadows", "tmp"))).toEqual([]);
    } finally {
      closeShadow(b);
      await b.close();
    }
    expect(await restoredRows(location, path.join(dir, "out.db"))).toEqual(Array.from({ length: 3002 }, (_, i) => i + 1));
  });

  it("the Journal throws E_REPLAY for a change the backup's state cannot take, rolls the host back, and carries on", async () => {
    const dir = tmpDir();
    const hostFile = path.join(dir, "host.db");
    const backend = await openBackend(path.join(dir, "backup"), { mode: "create" });
    const db = new Database(hostFile);
    try {
      const journal = await Journal.open(db, backendSink(backend));
      await journal.transaction((tx) => tx.exec("CREATE TABLE t (x)"));
      await journal.transaction((tx) => tx.run("INSERT INTO t VALUES (?)", 1));
      // A table made behind the Journal's back: the host can write to it, a restore cannot.
      db.exec("CREATE TABLE side (y)");
      await expect(journal.transaction((tx) => tx.run("INSERT INTO side VALUES (?)", 2))).rejects.toMatchObject({
        code: "E_REPLAY",
        message: expect.stringMatching(/^change 4, statement 0 cannot apply to the backup's state: no such table: side/),
      });
      expect(db.prepare("SELECT count(*) FROM side").pluck().get()).toBe(0);
      // Version 1 is the Journal's own first change, on an empty database.
      expect(backend.head().version).toBe(3);
      db.exec("DROP TABLE side");
      await journal.transaction((tx) => tx.run("INSERT INTO t VALUES (?)", 3));
      const out = path.join(dir, "out.db");
      await restore(backend, out);
      expect(rows(out)).toEqual([1, 3]);
      expectSameDb(out, hostFile);
    } finally {
      db.close();
      await backend.close();
    }
  });

  it("the Core Lightning plugin refuses a write the backup's state cannot take; after a restart the node carries on and restores row by row", async () => {
    const root = tmpDir();
    const dir = path.join(root, "bitcoin");
    fs.mkdirSync(dir);
    const backup = path.join(root, "backup");
    expect((await runCli(["cln", "init", backup, "--lightning-dir", dir])).code).toBe(0);
    const node = new FakeLightningd(dir);
    try {
      node.startPlugin();
      await node.handshake();
      expect(await node.transaction(["INSERT INTO payments (id) VALUES (1)"])).toBe("continue");
      expect(await node.transaction(["INSERT INTO payments (id) VALUES (2)"])).toBe("continue");
      expect(await node.hook(["INSERT INTO nosuchtable (id) VALUES (3)"])).toBe("abort");
      expect(node.logsAt("broken").at(-1)).toMatch(/refusing db_write for data_version 3: change 3, statement 0 cannot apply to the backup's state: no such table: nosuchtable/);
      await node.stopPlugin();
      node.startPlugin();
      await node.handshake();
      expect(await node.transaction(["INSERT INTO payments (id) VALUES (3)"])).toBe("continue");
      await node.stopPlugin();
      const out = path.join(root, "out.sqlite3");
      const r = await runCli(["restore", backup, out, "--rules", "core-lightning"]);
      expect(r.code, r.stderr).toBe(0);
      expectSameDb(out, path.join(dir, "lightningd.sqlite3"));
      expect(rows(out, "SELECT id FROM payments ORDER BY id")).toEqual([1, 2, 3]);
    } finally {
      node.close();
    }
  });

  it("stays exact across its periodic commits: redos and refusals on either side of every 256th change; after a clean close its file equals the restore", async () => {
    const dir = tmpDir();
    const opts = { shadow: { dir: path.join(dir, "shadows") } };
    const b = await openBackend(path.join(dir, "b"), { mode: "create" });
    try {
      await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x UNIQUE)"] }, opts);
      for (let v = 2; v <= 600; v++) {
        await applyChange(b, { version: v, transaction: [`INSERT INTO t VALUES (${v})`] }, opts);
        if ([255, 256, 257, 258, 511, 512, 513].includes(v)) {
          // A redo undoes v in the shadow (its value is free again), and a refused change undoes nothing else.
          await applyChange(b, { version: v, transaction: [`INSERT INTO t VALUES (${v})`, `INSERT INTO t VALUES (${-v})`] }, opts);
          await expect(applyChange(b, { version: v + 1, transaction: [`INSERT INTO t VALUES (${v - 200})`] }, opts)).rejects.toMatchObject({ code: "E_REPLAY" });
        }
      }
      const out = path.join(dir, "out.db");
      await restore(b, out);
      const expected = rows(out);
      expect(expected.length).toBe(599 + 7);
      const file = shadowOf(b).file;
      closeShadow(b);
      expect(rows(file)).toEqual(expected);
    } finally {
      closeShadow(b);
      await b.close();
    }
  });

  it("keeps at most MAX_OPEN_SHADOWS shadows open: the least recently used is closed cleanly and resyncs, still checking and still exact on a redo", async () => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    const opts = { shadow: { dir: shadows } };
    const backends = [];
    try {
      for (let i = 0; i < MAX_OPEN_SHADOWS + 3; i++) {
        const b = await openBackend(path.join(dir, `b${i}`), { mode: "create" });
        backends.push(b);
        await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x UNIQUE)"] }, opts);
        await applyChange(b, { version: 2, transaction: [`INSERT INTO t VALUES (${i})`] }, opts);
      }
      // The first ones were closed to make room, each leaving its clean marker.
      expect(fs.readdirSync(shadows).filter((n) => n.endsWith(".clean")).length).toBe(3);
      const first = backends[0]!;
      await expect(applyChange(first, { version: 3, transaction: ["INSERT INTO t VALUES (0)"] }, opts)).rejects.toMatchObject({ code: "E_REPLAY" });
      await applyChange(first, { version: 3, transaction: ["INSERT INTO t VALUES (1)"] }, opts);
      // A redo right after: the shadow undoes version 3 (or a unique 1 would refuse it).
      await applyChange(first, { version: 3, transaction: ["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (3)"] }, opts);
      const out = path.join(dir, "out.db");
      await restore(first, out);
      expect(rows(out)).toEqual([0, 1, 3]);
    } finally {
      for (const b of backends) {
        closeShadow(b);
        await b.close();
      }
    }
  });

  it("a full disk under the shadow is a storage error naming the directory, not a bad statement; nothing is stored, and the change is taken once there is room", async (ctx) => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    fs.mkdirSync(shadows);
    if (!mountSmallDisk(shadows)) {
      // A full disk cannot be produced without mount; there is no honest stand-in for SQLite's own writes.
      console.warn("mount is not allowed here: the full-disk shadow test cannot run");
      ctx.skip();
    }
    const opts = { shadow: { dir: shadows } };
    const location = path.join(dir, "backup");
    const b = await openBackend(location, { mode: "create" });
    try {
      await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x)"] }, opts);
      closeShadow(b);
      // Fill the disk, and drop the shadow: the next change must rebuild it there.
      for (const f of fs.readdirSync(shadows)) fs.rmSync(path.join(shadows, f), { recursive: true, force: true });
      const filler = path.join(shadows, "filler");
      fs.writeFileSync(filler, Buffer.alloc(1 << 20));
      const logBefore = (await b.status()).bytes;
      const err = await applyChange(b, { version: 2, transaction: ["INSERT INTO t VALUES (2)"] }, opts).catch((e: unknown) => e);
      expect((err as TidemarkError).code).toBe("E_BACKEND");
      expect((err as TidemarkError).message).toMatch(/^\[shadow\] /);
      expect((err as TidemarkError).hint).toMatch(new RegExp(`free disk space in ${shadows}`));
      expect(b.head().version).toBe(1);
      expect((await b.status()).bytes).toBe(logBefore);
      fs.rmSync(filler);
      expect((await applyChange(b, { version: 2, transaction: ["INSERT INTO t VALUES (2)"] }, opts)).action).toBe("append");
    } finally {
      closeShadow(b);
      await b.close();
    }
    expect(await restoredRows(location, path.join(dir, "out.db"))).toEqual([2]);
  });
});
