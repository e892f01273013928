/**
 * The log index (docs/format.md, "Log index") on the file backend, with real files: an open
 * that uses it sees exactly what a full scan sees, and an index that does not hold (stale, torn,
 * flipped, of another backup, damage after or under it) is ignored, or only vouches for the
 * bytes it covers, so that damage is reported exactly as without one.
 */
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { describe, expect, it } from "vitest";
import type { Backend, BackendStatus } from "../../src/backup/backup.js";
import { openBackend } from "../../src/backup/registry.js";
import { applyChange } from "../../src/ops/ingest.js";
import { TidemarkError } from "../../src/util/errors.js";
import type { Logger } from "../../src/util/logger.js";
import { collect, tx } from "../helpers/backend-conformance.js";
import { tmpDir } from "../helpers/tmp.js";

const LOG = "log-0000000001.tml";
const INDEX = "log-0000000001.tmi";

/** A logger that keeps every message. */
function recorder(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const fn = (a: unknown, b?: unknown) => void lines.push(typeof a === "string" ? a : String(b ?? ""));
  const log: Logger = { debug: fn, info: fn, warn: fn, error: fn, child: () => log };
  return { log, lines };
}

async function seeded(versions: number, dir = path.join(tmpDir(), "backup"), tag = "a"): Promise<string> {
  const b = await openBackend(dir, { mode: "create" });
  await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (v INTEGER, tag TEXT)"] });
  for (let v = 2; v <= versions; v++) await applyChange(b, { version: v, transaction: tx(v, tag) });
  // A rewind and a redo, so that the index holds a state with history in it.
  await b.rewind();
  await applyChange(b, { version: versions, transaction: tx(versions, "redo") });
  await b.close();
  return dir;
}

async function appendChanges(dir: string, from: number, to: number): Promise<void> {
  const b = await openBackend(dir, { mode: "write" });
  for (let v = from; v <= to; v++) await applyChange(b, { version: v, transaction: tx(v) });
  await b.close();
}

/** What a reader sees: status and every change. Errors are part of what it sees. */
async function seen(dir: string, log?: Logger): Promise<{ status: BackendStatus; changes: unknown[] } | { error: string }> {
  let b: Backend;
  try {
    b = await openBackend(dir, { mode: "read", ...(log && { log }) });
  } catch (err) {
    return { error: `${(err as TidemarkError).code}: ${(err as Error).message}` };
  }
  try {
    const status = await b.status();
    let changes: unknown[];
    try {
      changes = await collect(b);
    } catch (err) {
      changes = [`${(err as TidemarkError).code}: ${(err as Error).message}`];
    }
    return { status, changes };
  } finally {
    await b.close();
  }
}

/** What a writer's open says: its head, or its error. Nothing is written (no change is made). */
async function writerOpen(dir: string, log?: Logger): Promise<string> {
  try {
    const b = await openBackend(dir, { mode: "write", ...(log && { log }) });
    const head = b.head();
    await b.close();
    return `head ${head.version} (rewind to ${head.prevVersion})`;
  } catch (err) {
    return `${(err as TidemarkError).code}: ${(err as Error).message}`;
  }
}

/** Runs `fn` with the backup's indexes moved aside: what a full scan gives. */
async function withoutIndex<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const names = fs.readdirSync(dir).filter((n) => n.endsWith(".tmi"));
  for (const n of names) fs.renameSync(path.join(dir, n), path.join(dir, `${n}.aside`));
  try {
    return await fn();
  } finally {
    for (const n of names) fs.renameSync(path.join(dir, `${n}.aside`), path.join(dir, n));
  }
}

const used = (lines: string[]) => lines.filter((l) => l.includes("opened from its log index"));
const ignored = (lines: string[]) => lines.filter((l) => l.includes("ignoring the log index"));

function flip(file: string, at: number): void {
  const bytes = fs.readFileSync(file);
  bytes[at]! ^= 0x55;
  fs.writeFileSync(file, bytes);
}

function recordOffsets(file: string): number[] {
  const bytes = fs.readFileSync(file);
  const out: number[] = [];
  for (let i = bytes.indexOf("TDMK"); i >= 0; i = bytes.indexOf("TDMK", i + 1)) out.push(i);
  return out;
}

describe("log index", () => {
  it("a clean close writes one; an open from it sees exactly what a full scan sees", async () => {
    const dir = await seeded(30);
    // The fields docs/format.md places: magic, format, generation, covered length, its CRC.
    const index = fs.readFileSync(path.join(dir, INDEX));
    const log = fs.readFileSync(path.join(dir, LOG));
    expect(index.subarray(0, 5)).toEqual(Buffer.from([0x54, 0x44, 0x4d, 0x49, 1]));
    expect([index.readUInt32LE(8), Number(index.readBigUInt64LE(12)), index.readUInt32LE(20)]).toEqual([1, log.length, zlib.crc32(log)]);
    expect([Number(index.readBigUInt64LE(28)), index[5], Number(index.readBigUInt64LE(36))]).toEqual([30, 1, 29]);
    const r = recorder();
    const indexed = await seen(dir, r.log);
    expect(used(r.lines)).toHaveLength(1);
    expect(ignored(r.lines)).toEqual([]);
    expect(indexed).toEqual(await withoutIndex(dir, () => seen(dir)));
    expect(indexed).toMatchObject({ status: { version: 30, prevVersion: 29, records: 30 } });
    // A writer goes on from it: rewind, then a change, as after a scan.
    const b = await openBackend(dir, { mode: "write" });
    await b.rewind();
    await applyChange(b, { version: 30, transaction: tx(30, "again") });
    await b.close();
    const after = await seen(dir);
    expect(after).toEqual(await withoutIndex(dir, () => seen(dir)));
    expect((after as { changes: { transaction?: unknown }[] }).changes.at(-1)?.transaction).toEqual(tx(30, "again"));
  });

  it("an index with records appended after it: they are scanned, and the backup is the same", async () => {
    const dir = await seeded(20);
    const early = fs.readFileSync(path.join(dir, INDEX));
    await appendChanges(dir, 21, 25);
    // The index of version 20 comes back, as if the writer had been killed before its close.
    fs.writeFileSync(path.join(dir, INDEX), early);
    const r = recorder();
    const indexed = await seen(dir, r.log);
    expect(used(r.lines)).toEqual([expect.stringMatching(/scanning the [1-9]\d* bytes after it/)]);
    expect(indexed).toMatchObject({ status: { version: 25, prevVersion: 24 } });
    expect(indexed).toEqual(await withoutIndex(dir, () => seen(dir)));
    expect(await writerOpen(dir)).toBe("head 25 (rewind to 24)");
  });

  it("a stale index (another backup's, or longer than the log) is ignored and the log scanned", async () => {
    const dir = await seeded(20);
    const other = await seeded(20, path.join(tmpDir(), "other"), "b");
    fs.copyFileSync(path.join(other, INDEX), path.join(dir, INDEX));
    let r = recorder();
    const a = await seen(dir, r.log);
    expect(ignored(r.lines)).toEqual([expect.stringContaining("the head record's CRC differs")]);
    expect(used(r.lines)).toEqual([]);
    expect(a).toEqual(await withoutIndex(dir, () => seen(dir)));
    expect((a as { changes: { transaction?: unknown }[] }).changes.at(-2)?.transaction).toEqual(tx(19, "a"));

    const longer = await seeded(25, path.join(tmpDir(), "longer"));
    fs.copyFileSync(path.join(longer, INDEX), path.join(dir, INDEX));
    r = recorder();
    expect(await seen(dir, r.log)).toEqual(await withoutIndex(dir, () => seen(dir)));
    expect(ignored(r.lines)).toEqual([expect.stringMatching(/covers \d+ bytes, the log holds \d+/)]);
  });

  it("a flipped byte in the index: ignored", async () => {
    const dir = await seeded(12);
    flip(path.join(dir, INDEX), 30);
    const r = recorder();
    expect(await seen(dir, r.log)).toEqual(await withoutIndex(dir, () => seen(dir)));
    expect(ignored(r.lines)).toEqual([expect.stringContaining("its CRC does not match")]);
    expect(await writerOpen(dir)).toBe("head 12 (rewind to 11)");
  });

  it("a torn tail after the index is dropped by the writer as without one", async () => {
    const dir = await seeded(10);
    const log = path.join(dir, LOG);
    const bytes = fs.readFileSync(log);
    const last = recordOffsets(log).at(-1)!;
    fs.appendFileSync(log, bytes.subarray(last, last + 20)); // a record cut short
    const r = recorder();
    const indexed = await seen(dir, r.log);
    expect(used(r.lines)).toHaveLength(1);
    expect(indexed).toMatchObject({ status: { version: 10, tornTail: { offset: bytes.length, bytes: 20 } } });
    expect(indexed).toEqual(await withoutIndex(dir, () => seen(dir)));
    const w = recorder();
    expect(await writerOpen(dir, w.log)).toBe("head 10 (rewind to 9)");
    expect(w.lines).toContainEqual(expect.stringContaining(`dropping a torn record at the end of the log: 20 bytes at offset ${bytes.length}`));
    expect(fs.statSync(log).size).toBe(bytes.length);
  });

  it("damage after the index is found by the tail's scan and reported as without an index", async () => {
    const dir = await seeded(10);
    const early = fs.readFileSync(path.join(dir, INDEX));
    const covered = fs.statSync(path.join(dir, LOG)).size;
    await appendChanges(dir, 11, 15);
    fs.writeFileSync(path.join(dir, INDEX), early);
    const log = path.join(dir, LOG);
    const at = recordOffsets(log).find((o) => o > covered)! + 40; // inside change 12's record
    flip(log, at);
    const r = recorder();
    const indexed = await seen(dir, r.log);
    expect(used(r.lines)).toHaveLength(1);
    expect(indexed).toMatchObject({ status: { damage: { intactVersion: 11 } } });
    expect(indexed).toEqual(await withoutIndex(dir, () => seen(dir)));
    const refused = await writerOpen(dir);
    expect(refused).toMatch(/^E_CORRUPT: /);
    expect(refused).toBe(await withoutIndex(dir, () => writerOpen(dir)));
  });

  it("damage in the bytes an index covers makes it ignored: the same damage report as without it", async () => {
    const dir = await seeded(10);
    const log = path.join(dir, LOG);
    flip(log, recordOffsets(log)[4]! + 40);
    const r = recorder();
    const indexed = await seen(dir, r.log);
    expect(ignored(r.lines)).toEqual([expect.stringContaining("the CRC of the bytes it covers differs")]);
    expect(indexed).toMatchObject({ status: { damage: { intactVersion: 4 } } });
    expect(indexed).toEqual(await withoutIndex(dir, () => seen(dir)));
    const refused = await writerOpen(dir);
    expect(refused).toMatch(/^E_CORRUPT: /);
    expect(refused).toBe(await withoutIndex(dir, () => writerOpen(dir)));
  });

  it("a compaction writes the index of the new generation and of the one it keeps", async () => {
    const dir = await seeded(8);
    const b = await openBackend(dir, { mode: "write", retention: { bases: 2 } });
    await b.compact({ version: 7, timestamp: 7, snapshot: async function* () { yield Buffer.from("seven"); } });
    // Killed, not closed: only compaction's indexes exist.
    expect(fs.readdirSync(dir).filter((n) => n.endsWith(".tmi")).sort()).toEqual([INDEX, "log-0000000002.tmi"]);
    await applyChange(b, { version: 9, transaction: tx(9) });
    const r = recorder();
    const indexed = await seen(dir, r.log);
    expect(used(r.lines)).toHaveLength(2);
    expect(indexed).toMatchObject({ status: { version: 9, generations: [{ lastVersion: 8 }, { baseVersion: 7, lastVersion: 9 }] } });
    expect(indexed).toEqual(await withoutIndex(dir, () => seen(dir)));
    await b.close();
  });
});
