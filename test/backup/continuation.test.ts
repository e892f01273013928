/**
 * Continuations: further records of the head version, for statements a host committed without a
 * new version (Core Lightning's PRAGMAs around a table rebuild). They are stored in order,
 * replayed in order, and a rewind removes exactly the single last record.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import type { Backend } from "../../src/backup/backup.js";
import { FLAG_CONTINUATION, RECORD_HEADER_SIZE } from "../../src/format/record-codec.js";
import type { Statement } from "../../src/model/change.js";
import { decide, reconcile } from "../../src/model/version-rules.js";
import { compact } from "../../src/ops/compaction.js";
import { applyChange } from "../../src/ops/ingest.js";
import { restore } from "../../src/ops/restore.js";
import { verify } from "../../src/ops/verify.js";
import { GapError, InputError, StaleError } from "../../src/util/errors.js";
import { collect } from "../helpers/backend-conformance.js";
import { applyStatements, expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

const ins = (v: number, tag: string): Statement[] => [`INSERT INTO t VALUES (${v}, '${tag}')`];

/** A backup and a reference database that receive the same changes. */
async function pair(): Promise<{ dir: string; backup: Backend; host: Database.Database; hostFile: string; put: (v: number, st: Statement[], continuation?: boolean) => Promise<void> }> {
  const dir = tmpDir();
  const backup = await openBackend(path.join(dir, "backup"), { mode: "create" });
  const hostFile = path.join(dir, "host.sqlite3");
  const host = new Database(hostFile);
  const put = async (v: number, st: Statement[], continuation = false) => {
    await applyChange(backup, { version: v, transaction: st, ...(continuation && { continuation }) });
    applyStatements(host, st);
  };
  return { dir, backup, host, hostFile, put };
}

async function restored(backup: Backend, dir: string, version?: number): Promise<string> {
  const dest = path.join(dir, `restored-${version ?? "head"}-${Math.random().toString(16).slice(2)}.sqlite3`);
  await restore(backup, dest, version === undefined ? {} : { version });
  return dest;
}

function rows(file: string): unknown[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare("SELECT v, tag FROM t ORDER BY rowid").all();
  } finally {
    db.close();
  }
}

describe("version rules: continuations", () => {
  const head = { version: 10, prevVersion: 9 };
  const continued = { version: 10, prevVersion: 10 };

  it("a continuation of the head appends; of any other version it is refused like a gap or a stale change", () => {
    expect(decide(head, { version: 10, hasSnapshot: false, continuation: true })).toBe("append-continuation");
    expect(decide(continued, { version: 10, hasSnapshot: false, continuation: true })).toBe("append-continuation");
    expect(decide({ version: 10, prevVersion: null }, { version: 10, hasSnapshot: false, continuation: true })).toBe("append-continuation");
    expect(() => decide(head, { version: 11, hasSnapshot: false, continuation: true })).toThrow(GapError);
    expect(() => decide(head, { version: 9, hasSnapshot: false, continuation: true })).toThrow(StaleError);
    expect(() => decide({ version: 0, prevVersion: null }, { version: 1, hasSnapshot: false, continuation: true })).toThrow(GapError);
    expect(() => decide(head, { version: 10, hasSnapshot: true, continuation: true })).toThrow(InputError);
  });

  it("once the head has a continuation it was committed: a plain repeat of it is stale, and a host one behind lost state", () => {
    expect(() => decide(continued, { version: 10, hasSnapshot: false })).toThrow(StaleError);
    expect(decide(continued, { version: 11, hasSnapshot: false })).toBe("append");
    expect(reconcile(10, continued)).toBe("in-sync");
    expect(() => reconcile(9, continued)).toThrow(StaleError);
  });
});

describe("backup core: continuations", () => {
  it("stores a continuation after its version and replays it in order; the backup restores the host row for row", async () => {
    const { dir, backup, host, hostFile, put } = await pair();
    await put(1, ["CREATE TABLE t (v INTEGER, tag TEXT)", ...ins(1, "one")]);
    await put(1, ins(1, "one, continued"), true);
    await put(1, ins(1, "one, continued again"), true);
    await put(2, ins(2, "two"));
    await put(2, ["UPDATE t SET tag = tag || '!' WHERE v = 2"], true);
    await put(3, ins(3, "three"));
    host.close();
    expect(backup.head()).toEqual({ version: 3, prevVersion: 2 });
    expectSameDb(await restored(backup, dir), hostFile);

    // restore --version includes every record of that version, continuations last.
    expect(rows(await restored(backup, dir, 1))).toEqual([
      { v: 1, tag: "one" },
      { v: 1, tag: "one, continued" },
      { v: 1, tag: "one, continued again" },
    ]);
    expect(rows(await restored(backup, dir, 2)).at(-1)).toEqual({ v: 2, tag: "two!" });

    const stream = await collect(backup, { to: 2 });
    expect(stream.map((c) => c.version)).toEqual([1, 1, 1, 2, 2]);
    await backup.close();

    // A reopen reads the same meaning back from the log.
    const again = await openBackend(path.join(dir, "backup"), { mode: "write" });
    expect(again.head()).toEqual({ version: 3, prevVersion: 2 });
    expect((await again.status()).records).toBe(6);
    expect((await verify(again)).problems).toEqual([]);
    await again.close();
  });

  it("marks a continuation with bit 7 of the header's flags byte, and nothing else about the record changes", async () => {
    const { dir, backup, put } = await pair();
    await put(1, ["CREATE TABLE t (v INTEGER, tag TEXT)"]);
    await put(1, ["PRAGMA foreign_keys = OFF;"], true);
    await backup.close();
    const log = fs.readFileSync(path.join(dir, "backup", fs.readdirSync(path.join(dir, "backup")).find((f) => f.startsWith("log-") && f.endsWith(".tml"))!));
    const first = log.readUInt32LE(20) + RECORD_HEADER_SIZE + 4;
    expect(log[6]).toBe(0b10); // a transaction
    expect(log[first + 6]).toBe(FLAG_CONTINUATION | 0b10);
    expect(FLAG_CONTINUATION).toBe(0x80);
    expect(log.readUInt32LE(first + 8)).toBe(1); // the same version
  });

  it("a rewind removes the single last record: a continuation alone, and only once", async () => {
    const { dir, backup, put } = await pair();
    await put(1, ["CREATE TABLE t (v INTEGER, tag TEXT)", ...ins(1, "one")]);
    await put(2, ins(2, "two"));
    await put(2, ins(2, "two, continued"), true);
    expect(backup.head()).toEqual({ version: 2, prevVersion: 2 });
    await backup.rewind();
    expect(backup.head()).toEqual({ version: 2, prevVersion: null });
    expect(rows(await restored(backup, dir))).toEqual([
      { v: 1, tag: "one" },
      { v: 2, tag: "two" },
    ]);
    await expect(backup.rewind()).rejects.toMatchObject({ code: "E_REWIND" });
    // The version may be continued again after the rewind, and then goes on as before.
    await put(2, ins(2, "two, continued once more"), true);
    await put(3, ins(3, "three"));
    await backup.close();
    const again = await openBackend(path.join(dir, "backup"), { mode: "read" });
    expect(rows(await restored(again, dir))).toEqual([
      { v: 1, tag: "one" },
      { v: 2, tag: "two" },
      { v: 2, tag: "two, continued once more" },
      { v: 3, tag: "three" },
    ]);
    await again.close();
  });

  it("restore --version V keeps a continuation of V that came after a rewound change V+1", async () => {
    const { dir, backup, put } = await pair();
    await put(1, ["CREATE TABLE t (v INTEGER, tag TEXT)", ...ins(1, "one")]);
    await put(2, ins(2, "rolled back"));
    await backup.rewind();
    await put(1, ins(1, "one, continued"), true);
    await put(2, ins(2, "two"));
    expect(rows(await restored(backup, dir, 1))).toEqual([
      { v: 1, tag: "one" },
      { v: 1, tag: "one, continued" },
    ]);
    expect(rows(await restored(backup, dir)).map((r) => (r as { tag: string }).tag)).toEqual(["one", "one, continued", "two"]);
    await backup.close();
  });

  it("compaction waits while the last record is a continuation, and folds continuations into its base once settled", async () => {
    const { dir, backup, host, hostFile, put } = await pair();
    await put(1, ["CREATE TABLE t (v INTEGER, tag TEXT)"]);
    for (let v = 2; v <= 5; v++) {
      await put(v, ins(v, `v${v}`));
      await put(v, ins(v, `v${v} continued`), true);
    }
    const waiting = await compact(backup, { tmpDir: dir });
    expect(waiting.skipped).toMatch(/continues version 5/);
    await put(6, ins(6, "v6"));
    await put(6, ins(6, "v6 continued"), true);
    await put(7, ins(7, "v7"));
    const done = await compact(backup, { tmpDir: dir });
    expect(done.skipped).toBeUndefined();
    expect(done.baseVersion).toBe(6);
    host.close();
    expectSameDb(await restored(backup, dir), hostFile);
    await backup.close();
    const again = await openBackend(path.join(dir, "backup"), { mode: "write" });
    expect(again.head()).toEqual({ version: 7, prevVersion: 6 });
    expectSameDb(await restored(again, dir), hostFile);
    await again.close();
  });
});
