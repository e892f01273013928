import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import type { Backend } from "../../src/backup/backup.js";
import { openBackend } from "../../src/backup/registry.js";
import type { Statement } from "../../src/model/change.js";
import { compact } from "../../src/ops/compaction.js";
import { TidemarkError } from "../../src/util/errors.js";
import { applyChange, type IngestOptions } from "../../src/ops/ingest.js";
import { restore } from "../../src/ops/restore.js";
import { CORE_LIGHTNING_RULES } from "../../src/ops/rewrite.js";
import { applyStatements, expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { Rng, Workload } from "../helpers/workload.js";

/** Builds a reference database from the committed history, up to `version`. */
function reference(file: string, base: string | null, history: Map<number, Statement[]>, from: number, version: number): string {
  fs.rmSync(file, { force: true });
  if (base) fs.copyFileSync(base, file);
  const db = new Database(file);
  for (let v = from; v <= version; v++) applyStatements(db, history.get(v)!);
  db.close();
  return file;
}

/**
 * Stores changes unchecked, as backups made before tidemark checked changes hold them: these
 * tests are about what restore and compaction do with a change that does not replay.
 */
const UNCHECKED: IngestOptions = { validate: false };

async function newBackend(dir: string): Promise<Backend> {
  return openBackend(path.join(dir, "backup"), { mode: "create" });
}

async function expectCode(p: Promise<unknown>, code: string): Promise<TidemarkError> {
  const err = await p.then(
    () => new Error("expected a failure"),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TidemarkError);
  expect((err as TidemarkError).code).toBe(code);
  return err as TidemarkError;
}

describe("restore round trip", () => {
  // Each seed: a host runs random transactions, sometimes dies between ack and commit and redoes
  // the version differently, and the backup is compacted now and then. Every restore must equal
  // the host's database row by row, at the head and at an earlier version.
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`random workload ${seed} restores exactly, at the head and at earlier versions`, async () => {
      const dir = tmpDir();
      const rng = new Rng(seed * 7919);
      const work = new Workload(seed);
      const host = new Database(path.join(dir, "host.db"));
      const history = new Map<number, Statement[]>();
      const b = await newBackend(dir);

      // Half the seeds start from a snapshot of an existing database, half from empty.
      let first = 1;
      let base: string | null = null;
      if (seed % 2 === 0) {
        applyStatements(host, work.transaction(8));
        first = 100;
        base = path.join(dir, "base.db");
        await host.backup(base);
        await applyChange(b, { version: first, snapshot: fs.createReadStream(base) });
      }
      let version = first - (base ? 0 : 1);
      const from = base ? first + 1 : 1;
      for (let i = 0; i < 150; i++) {
        if (rng.chance(0.08)) {
          // Acked, then the host died before commit: the redo must replace it. Were it replayed,
          // its table would show up in the restore.
          await applyChange(b, { version: version + 1, transaction: [`CREATE TABLE rolled_back_${i} (x)`] });
        }
        const statements = work.transaction();
        await applyChange(b, { version: version + 1, transaction: statements });
        applyStatements(host, statements);
        version++;
        history.set(version, statements);
        if (rng.chance(0.03)) await compact(b);
      }
      host.close();

      const out = path.join(dir, "restored.db");
      const result = await restore(b, out);
      expect(result.version).toBe(version);
      expectSameDb(out, path.join(dir, "host.db"));

      const status = await b.status();
      const earlier = rng.int(Math.max(status.firstVersion, from), version - 1);
      const older = path.join(dir, "older.db");
      await restore(b, older, { version: earlier });
      expectSameDb(older, reference(path.join(dir, "ref.db"), base, history, from, earlier));
      await b.close();

      const leftovers = fs.readdirSync(dir).filter((n) => n.endsWith(".tmp"));
      expect(leftovers).toEqual([]);
    });
  }
});

describe("restore", () => {
  async function small(dir: string, statements: Statement[][] = [["CREATE TABLE t (x)"], ["INSERT INTO t VALUES (1)"]]) {
    const b = await newBackend(dir);
    for (let i = 0; i < statements.length; i++) await applyChange(b, { version: i + 1, transaction: statements[i]! }, UNCHECKED);
    return b;
  }

  it("refuses an existing destination without force, and replaces it and its WAL with force", async () => {
    const dir = tmpDir();
    const b = await small(dir);
    const dest = path.join(dir, "out.db");
    fs.writeFileSync(dest, "precious");
    const err = await expectCode(restore(b, dest), "E_EXISTS");
    expect(err.hint).toContain("--force");
    expect(fs.readFileSync(dest, "utf8")).toBe("precious");

    fs.writeFileSync(`${dest}-wal`, "stale wal from another database");
    await restore(b, dest, { force: true });
    expect(fs.existsSync(`${dest}-wal`)).toBe(false);
    const db = new Database(dest, { readonly: true });
    expect(db.prepare("SELECT x FROM t").pluck().all()).toEqual([1]);
    db.close();
    await b.close();
  });

  it("refuses a destination whose stale -wal would be applied to the new file", async () => {
    const dir = tmpDir();
    const b = await small(dir);
    const dest = path.join(dir, "out.db");
    fs.writeFileSync(`${dest}-wal`, "x");
    const err = await expectCode(restore(b, dest), "E_EXISTS");
    expect(err.message).toContain("out.db-wal");
    expect(fs.existsSync(dest)).toBe(false);
    await b.close();
  });

  it("names a missing destination directory", async () => {
    const dir = tmpDir();
    const b = await small(dir);
    const err = await expectCode(restore(b, path.join(dir, "nope", "out.db")), "E_INPUT");
    expect(err.hint).toContain("mkdir -p");
    await b.close();
  });

  it("a statement that fails names its version and index, and leaves no file behind", async () => {
    const dir = tmpDir();
    const b = await small(dir, [["CREATE TABLE t (x)"], ["INSERT INTO t VALUES (1)"], ["INSERT INTO nowhere VALUES (1)"]]);
    const dest = path.join(dir, "out.db");
    const err = await expectCode(restore(b, dest), "E_RESTORE");
    expect(err.message).toContain("replaying version 3, statement 0 failed: no such table: nowhere");
    expect(fs.readdirSync(dir)).toEqual(["backup"]);
    await b.close();
  });

  it("restores the pre-4090 Core Lightning statements only with the core-lightning rules", async () => {
    const dir = tmpDir();
    const b = await small(dir, [
      ["CREATE TABLE outputs (id INTEGER, reserved_til INTEGER)", "CREATE TABLE channels (id INTEGER, peer_id INTEGER)"],
      ["INSERT INTO outputs VALUES (1, 0)", "INSERT INTO channels VALUES (3, 0)"],
      ["UPDATE outputs SET reserved_til=1891733WHERE id=1", "UPDATE channels SET peer_id=7WHERE channels.id=3"],
    ]);
    const dest = path.join(dir, "out.db");
    await expectCode(restore(b, dest), "E_RESTORE");
    const result = await restore(b, dest, { rules: CORE_LIGHTNING_RULES });
    expect(result.rewrites).toEqual({ "cln-reserved-til-where": 1, "cln-peer-id-where": 1 });
    const db = new Database(dest, { readonly: true });
    expect(db.prepare("SELECT reserved_til FROM outputs").pluck().get()).toBe(1891733);
    expect(db.prepare("SELECT peer_id FROM channels").pluck().get()).toBe(7);
    db.close();
    await b.close();
  });

  it("keeps a WAL-mode snapshot in WAL mode", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "wal.db");
    const host = new Database(src);
    host.pragma("journal_mode = WAL");
    host.exec("CREATE TABLE t (x); INSERT INTO t VALUES ('from snapshot')");
    host.close();
    const b = await newBackend(dir);
    await applyChange(b, { version: 5, snapshot: fs.createReadStream(src) });
    await applyChange(b, { version: 6, transaction: ["INSERT INTO t VALUES ('after')"] });
    const dest = path.join(dir, "out.db");
    await restore(b, dest);
    const db = new Database(dest, { readonly: true });
    expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    expect(db.prepare("SELECT x FROM t").pluck().all()).toEqual(["from snapshot", "after"]);
    db.close();
    await b.close();
  });

  it("a snapshot that is not a sound database fails integrity_check and no file appears", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "damaged.db");
    const host = new Database(src);
    host.exec("CREATE TABLE t (x TEXT); CREATE INDEX tx ON t(x);");
    const ins = host.prepare("INSERT INTO t VALUES (?)");
    for (let i = 0; i < 2000; i++) ins.run(`row ${i} `.repeat(10));
    host.close();
    // Damage a page in the middle of the file: the blob checksums are computed over the damaged
    // bytes, so only SQLite's own check can find it.
    const bytes = fs.readFileSync(src);
    bytes.fill(0x41, 4096 * 20 + 100, 4096 * 20 + 400);
    fs.writeFileSync(src, bytes);
    const b = await newBackend(dir);
    await applyChange(b, { version: 1, snapshot: fs.createReadStream(src) }, UNCHECKED);
    const dest = path.join(dir, "out.db");
    const err = await restore(b, dest).catch((e: unknown) => e as TidemarkError);
    expect(err).toBeInstanceOf(TidemarkError);
    expect(["E_RESTORE"]).toContain((err as TidemarkError).code);
    expect(fs.existsSync(dest)).toBe(false);
    expect(fs.readdirSync(dir).filter((n) => n.includes("tidemark"))).toEqual([]);
    await b.close();
  });

  it("an empty backup has nothing to restore", async () => {
    const dir = tmpDir();
    const b = await newBackend(dir);
    const err = await expectCode(restore(b, path.join(dir, "out.db")), "E_RANGE");
    expect(err.message).toContain("empty");
    await b.close();
  });

  it("a version outside the held range lists the range", async () => {
    const dir = tmpDir();
    const b = await small(dir);
    const err = await expectCode(restore(b, path.join(dir, "out.db"), { version: 9 }), "E_RANGE");
    expect(err.message).toContain("1..2");
    await b.close();
  });
});

describe("compaction", () => {
  it.each([false, true])("folds the log into a base, reports what it did, and restores the same database (replay inline: %s)", async (inline) => {
    const dir = tmpDir();
    const work = new Workload(99);
    const host = new Database(path.join(dir, "host.db"));
    const b = await newBackend(dir);
    for (let v = 1; v <= 300; v++) {
      const st = work.transaction();
      await applyChange(b, { version: v, transaction: st });
      applyStatements(host, st);
    }
    host.close();
    const stats = await compact(b, { inline });
    expect(stats.skipped).toBeUndefined();
    expect(stats.baseVersion).toBe(299);
    expect(stats.before.records).toBe(300);
    expect(stats.after.records).toBe(2);
    expect(stats.durationMs).toBeGreaterThanOrEqual(stats.replayMs);
    expect(b.head()).toEqual({ version: 300, prevVersion: 299 });
    await restore(b, path.join(dir, "out.db"));
    expectSameDb(path.join(dir, "out.db"), path.join(dir, "host.db"));

    const again = await compact(b);
    expect(again.skipped).toMatch(/nothing precedes/);
    await b.close();
  });

  it("applies rewrite rules in its replay, so the new base holds repaired statements", async () => {
    const dir = tmpDir();
    const b = await newBackend(dir);
    await applyChange(b, { version: 1, transaction: ["CREATE TABLE outputs (id INTEGER, reserved_til INTEGER)", "INSERT INTO outputs VALUES (1, 0)"] }, UNCHECKED);
    await applyChange(b, { version: 2, transaction: ["UPDATE outputs SET reserved_til=5WHERE id=1"] }, UNCHECKED);
    await applyChange(b, { version: 3, transaction: ["INSERT INTO outputs VALUES (2, 0)"] }, UNCHECKED);
    await expectCode(compact(b), "E_RESTORE");
    const stats = await compact(b, { rules: CORE_LIGHTNING_RULES });
    expect(stats.rewrites["cln-reserved-til-where"]).toBe(1);
    const dest = path.join(dir, "out.db");
    await restore(b, dest); // no rules needed any more
    const db = new Database(dest, { readonly: true });
    expect(db.prepare("SELECT reserved_til FROM outputs ORDER BY id").pluck().all()).toEqual([5, 0]);
    db.close();
    await b.close();
  });

  it("skips an empty backup", async () => {
    const dir = tmpDir();
    const b = await newBackend(dir);
    expect((await compact(b)).skipped).toMatch(/empty/);
    await b.close();
  });
});
