/**
 * A redo (the head's version again, as a host sends after it died between the ack and its
 * commit) is one durable record: cut short anywhere, the backup holds the old head or the
 * redone change, never the version below. A power cut that tears an append is stood in for by
 * the log cut at every byte offset of the redo record (the file backend's torn tail); on S3 an
 * append is one PUT, which lands whole or not at all.
 */
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Backend } from "../../src/backup/backup.js";
import { openBackend } from "../../src/backup/registry.js";
import { encodeChangeRecord, encodeRewindRecord, FLAG_REPLACES_LAST } from "../../src/format/record-codec.js";
import type { Statement, StoredChange } from "../../src/model/change.js";
import { applyChange } from "../../src/ops/ingest.js";
import { restore } from "../../src/ops/restore.js";
import { dumpDb } from "../helpers/sqlite.js";
import { startS3, type S3Server } from "../helpers/s3.js";
import { tmpDir } from "../helpers/tmp.js";

const LOG = "log-0000000001.tml";
const ORIGINAL: Statement[] = [{ sql: "INSERT INTO t VALUES (?)", params: ["acked, not committed"] }];
const REDONE: Statement[] = [{ sql: "INSERT INTO t VALUES (?)", params: ["redone"] }];

async function changes(b: Backend): Promise<StoredChange[]> {
  const out: StoredChange[] = [];
  for await (const c of b.streamChanges({ from: 1 })) out.push(c);
  return out;
}

/** The head version and the rows a restore gives. */
async function restored(location: string, dir: string): Promise<{ version: number; rows: unknown[] }> {
  const file = path.join(dir, `restore-${Math.random().toString(36).slice(2)}.db`);
  const b = await openBackend(location, { mode: "read" });
  try {
    const r = await restore(b, file);
    return { version: r.version, rows: dumpDb(file).tables.t!.map((row) => (row as { x: unknown }).x) };
  } finally {
    await b.close();
    fs.rmSync(file, { force: true });
  }
}

async function seed(location: string): Promise<Backend> {
  const b = await openBackend(location, { mode: "create" });
  await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x)"] });
  await applyChange(b, { version: 2, transaction: ["INSERT INTO t VALUES ('two')"] });
  await applyChange(b, { version: 3, transaction: ORIGINAL });
  return b;
}

describe("a redo is one durable record", () => {
  it("file backend: the log cut at every byte of the redo holds the old head or the redone change, never version 2", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    const b = await seed(backup);
    const before = fs.readFileSync(path.join(backup, LOG));
    const r = await applyChange(b, { version: 3, transaction: REDONE });
    expect(r.action).toBe("rewind-then-append");
    await b.close();
    const after = fs.readFileSync(path.join(backup, LOG));
    expect(after.subarray(0, before.length).equals(before)).toBe(true);
    const redo = after.subarray(before.length);
    // One record: its header says so, and its flags carry the redo bit.
    expect(redo.readUInt32LE(20) + 32).toBe(redo.length);
    expect(redo[6]! & FLAG_REPLACES_LAST).toBe(FLAG_REPLACES_LAST);
    // As docs/format.md ("Redo") spells it out.
    expect(redo.subarray(0, 16).toString("hex")).toBe("54444d4b010112000300000000000000");

    const seen = { old: 0, redone: 0 };
    for (let cut = 0; cut <= redo.length; cut++) {
      const copy = path.join(dir, `cut-${cut}`);
      fs.cpSync(backup, copy, { recursive: true });
      fs.writeFileSync(path.join(copy, LOG), Buffer.concat([before, redo.subarray(0, cut)]));
      // A writer opens it (dropping a torn tail), as the daemon would after the power came back.
      const w = await openBackend(copy, { mode: "write" });
      const head = w.head();
      const last = (await changes(w)).at(-1)!;
      await w.close();
      expect(head.version, `cut at ${cut} of ${redo.length}`).toBe(3);
      expect(head.prevVersion).toBe(2);
      if (cut < redo.length) {
        expect(last.transaction).toEqual(ORIGINAL);
        seen.old++;
      } else {
        expect(last.transaction).toEqual(REDONE);
        seen.redone++;
      }
    }
    expect(seen).toEqual({ old: redo.length, redone: 1 });
    expect((await restored(path.join(dir, `cut-${redo.length}`), dir)).rows).toEqual(["two", "redone"]);
    expect((await restored(path.join(dir, "cut-1"), dir)).rows).toEqual(["two", "acked, not committed"]);
  });

  it("a redo after a redo, its rewind, and compaction across it keep exactly the live change", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    const b = await seed(backup);
    await applyChange(b, { version: 3, transaction: REDONE });
    await applyChange(b, { version: 3, transaction: ["INSERT INTO t VALUES ('third try')"] });
    expect(b.head()).toEqual({ version: 3, prevVersion: 2 });
    await b.rewind();
    expect(b.head()).toEqual({ version: 2, prevVersion: null });
    await applyChange(b, { version: 3, transaction: REDONE });
    await applyChange(b, { version: 4, transaction: ["INSERT INTO t VALUES ('four')"] });
    await applyChange(b, { version: 4, transaction: ["INSERT INTO t VALUES ('four, redone')"] });
    await b.close();
    // Reopened from its log: the same state.
    const again = await openBackend(backup, { mode: "write" });
    expect(again.head()).toEqual({ version: 4, prevVersion: 3 });
    await again.close();
    expect((await restored(backup, dir)).rows).toEqual(["two", "redone", "four, redone"]);
  });

  it("a redo replacing a snapshot base deletes the replaced blob once the redo is durable", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    const b = await seed(backup);
    const db = path.join(dir, "base.db");
    const { default: Database } = await import("better-sqlite3");
    const src = new Database(db);
    src.exec("CREATE TABLE t (x); INSERT INTO t VALUES ('from the base')");
    src.close();
    await applyChange(b, { version: 10, snapshot: fs.createReadStream(db) });
    const blobs = () => fs.readdirSync(backup).filter((n) => n.startsWith("snap-"));
    expect(blobs()).toHaveLength(1);
    const first = blobs()[0];
    await applyChange(b, { version: 10, snapshot: fs.createReadStream(db) });
    expect(blobs()).toHaveLength(1);
    expect(blobs()[0]).not.toBe(first);
    await b.close();
    expect(await restored(backup, dir)).toEqual({ version: 10, rows: ["from the base"] });
  });

  it("a log written before the redo record (a rewind record, then the change) still reads", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    const b = await seed(backup);
    await b.close();
    // What tidemark wrote for a redo until now: a rewind record of 3, then change 3 again.
    const old = Buffer.concat([encodeRewindRecord(3, Date.now()), encodeChangeRecord({ version: 3, timestamp: Date.now(), transaction: REDONE })]);
    fs.appendFileSync(path.join(backup, LOG), old);
    const r = await openBackend(backup, { mode: "write" });
    expect(r.head()).toEqual({ version: 3, prevVersion: 2 });
    expect((await changes(r)).at(-1)!.transaction).toEqual(REDONE);
    await r.close();
    expect((await restored(backup, dir)).rows).toEqual(["two", "redone"]);
  });

  it("a redo that does not follow a rewindable change of its version is reported as corrupt", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    const b = await seed(backup);
    await b.rewind();
    await b.close();
    fs.appendFileSync(path.join(backup, LOG), encodeChangeRecord({ version: 3, timestamp: Date.now(), transaction: REDONE, replacesLast: true }));
    await expect(openBackend(backup, { mode: "write" })).rejects.toThrow(/redo of version 3 does not directly follow a rewindable change 3/);
  });
});

describe("a redo is one durable record: S3", () => {
  let s3: S3Server;
  beforeAll(async () => {
    s3 = await startS3();
  });
  afterAll(async () => {
    await s3.stop();
  });

  it("is one PUT: without it the backup holds the old head, with it the redone change", async () => {
    const dir = tmpDir();
    const prefix = `redo-${Math.random().toString(36).slice(2)}`;
    const location = s3.location(prefix);
    const b = await seed(location);
    const before = await s3.keys(prefix);
    await applyChange(b, { version: 3, transaction: REDONE });
    await b.close();
    const after = await s3.keys(prefix);
    const added = after.filter((k) => !before.includes(k));
    expect(added).toHaveLength(1);
    expect(added[0]).toMatch(/log/);
    expect(await restored(location, dir)).toEqual({ version: 3, rows: ["two", "redone"] });

    // The same backup as if that one PUT had never landed: the old head, nothing below it.
    const cut = `${prefix}-cut`;
    for (const key of before) await s3.putObject(`${cut}${key.slice(prefix.length)}`, (await s3.getObject(key))!);
    expect(await restored(s3.location(cut), dir)).toEqual({ version: 3, rows: ["two", "acked, not committed"] });
  });
});
