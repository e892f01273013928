/**
 * The backend conformance suite: the contract from DESIGN.md and src/backend.ts, run the same
 * way against every backend. A backend's test file calls `backendConformance` with a function
 * that returns the location of a fresh, not yet created backup.
 */
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import type { Backend, BackendOptions, OpenMode } from "../../src/backup/backup.js";
import { openBackend } from "../../src/backup/registry.js";
import type { ChangeInput, SnapshotSource, Statement, StoredChange } from "../../src/model/change.js";
import { TidemarkError } from "../../src/util/errors.js";
import { applyChange as ingest } from "../../src/ops/ingest.js";
import { openStorage } from "../../src/backup/registry.js";
import { encodeDocument } from "../../src/backup/documents.js";
import { probeRecord } from "../../src/format/record-codec.js";
import { crc32 } from "../../src/format/crc32.js";
import { Keyring } from "../../src/format/keyring.js";
import { silentLogger } from "../../src/util/logger.js";
import { Rng } from "./workload.js";

/**
 * The suite tests what a backend stores and streams back, byte for byte, not what ingest
 * accepts: its changes (random snapshot bytes, statements for tables that do not exist) go in
 * unchecked. test/ops/validate.test.ts and test/daemon/validate.test.ts test the checks.
 */
const applyChange = (b: Backend, change: ChangeInput) => ingest(b, change, { validate: false });

/** Bytes a harness can damage: a generation's log at an offset, or a blob at an offset. */
export type StoredTarget = { readonly generation: number; readonly offset: number } | { readonly blob: string; readonly offset: number };

/** How the suite reaches a backend. */
export interface ConformanceHarness {
  /** Returns the location of a new backup that does not exist yet. */
  newLocation(): Promise<string> | string;
  /**
   * Overwrites stored bytes in place, behind the backend's back, as media damage or an
   * attacker would: a byte flip in a file, a re-PUT of an object.
   */
  overwrite(location: string, target: StoredTarget, bytes: Buffer): Promise<void>;
  /** Whether a second writer is refused (false only where the store cannot enforce it). */
  readonly exclusiveWriter: boolean;
  /** Extra options for every open. */
  readonly options?: Partial<BackendOptions>;
}

/** A statement list that names its version, so a wrong or replayed change is visible. */
export function tx(version: number, tag = "a"): Statement[] {
  return [{ sql: "INSERT INTO t VALUES (?, ?)", params: [BigInt(version), `${tag}${version}`] }];
}

/** Collects a stream of changes, reading every snapshot into memory (tests use small ones). */
export async function collect(
  backend: Backend,
  range?: { from?: number; to?: number },
): Promise<{ version: number; timestamp: number; transaction?: readonly Statement[]; snapshot?: Buffer }[]> {
  const out = [];
  for await (const c of backend.streamChanges(range)) out.push(await materialise(c));
  return out;
}

async function materialise(c: StoredChange) {
  let snapshot: Buffer | undefined;
  if (c.snapshot) {
    const parts: Buffer[] = [];
    for await (const chunk of c.snapshot.open()) parts.push(chunk);
    snapshot = Buffer.concat(parts);
    expect(snapshot.length).toBe(c.snapshot.size);
  }
  return {
    version: c.version,
    timestamp: c.timestamp,
    ...(c.transaction && { transaction: c.transaction }),
    ...(snapshot && { snapshot }),
  };
}

function snapshotOf(bytes: Buffer): SnapshotSource {
  // Uneven chunks, so that frame boundaries fall mid-chunk.
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += 77_777) chunks.push(bytes.subarray(i, i + 77_777));
  return Readable.from(chunks);
}

/** A snapshot source that lets appends happen while the compaction uploads it: `rest` waits for `release`. */
function gatedSnapshot(first: string, rest: string): { snapshot: () => SnapshotSource; release: () => void } {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  async function* parts() {
    yield Buffer.from(first);
    await gate;
    yield Buffer.from(rest);
  }
  return { snapshot: () => parts(), release: () => release() };
}

async function expectCode(p: Promise<unknown>, code: string): Promise<TidemarkError> {
  const err = await p.then(
    () => {
      throw new Error(`expected ${code}, but it succeeded`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TidemarkError);
  expect((err as TidemarkError).code).toBe(code);
  return err as TidemarkError;
}

/** Registers the conformance suite for one backend. */
export function backendConformance(name: string, harness: ConformanceHarness): void {
  const open = async (location: string, mode: OpenMode) => openBackend(location, { ...harness.options, mode });

  /** Creates a backup, runs `fn` on the writer, and closes it. */
  async function withNew<T>(fn: (b: Backend, location: string) => Promise<T>): Promise<T> {
    const location = await harness.newLocation();
    const b = await open(location, "create");
    try {
      return await fn(b, location);
    } finally {
      await b.close();
    }
  }

  async function seed(b: Backend, upTo: number, from = 1, tag = "a"): Promise<void> {
    if (from === 1) await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (v INTEGER, tag TEXT)"] });
    for (let v = Math.max(from, 2); v <= upTo; v++) await applyChange(b, { version: v, transaction: tx(v, tag) });
  }

  describe(`backend conformance: ${name}`, () => {
    it("a new backup is empty", async () => {
      await withNew(async (b) => {
        expect(b.head()).toEqual({ version: 0, prevVersion: null });
        const s = await b.status();
        expect(s).toMatchObject({ version: 0, prevVersion: null, baseVersion: 0, firstVersion: 0, records: 0 });
        expect(await collect(b)).toEqual([]);
      });
    });

    it("creating over an existing backup is refused", async () => {
      await withNew(async (_b, location) => {
        await expectCode(open(location, "create"), "E_EXISTS");
      });
    });

    it("opening a backup that does not exist says so", async () => {
      const location = await harness.newLocation();
      await expectCode(open(location, "write"), "E_NO_BACKUP");
      await expectCode(open(location, "read"), "E_NO_BACKUP");
    });

    it("stores changes and streams them back in order, parameters intact", async () => {
      const params: Statement = {
        sql: "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
        params: [1.5, "tëxt 🚀", null, -9223372036854775808n, Buffer.from([0, 255, 1]), 42],
      };
      const named: Statement = { sql: "INSERT INTO t VALUES (@a, :b)", params: { a: 9007199254740993n, b: Buffer.alloc(0) } };
      await withNew(async (b) => {
        await applyChange(b, { version: 1, timestamp: 1000, transaction: ["CREATE TABLE t (a, b, c, d, e, f)"] });
        await applyChange(b, { version: 2, timestamp: 2000, transaction: [params, named, "SELECT 'it''s'"] });
        expect(b.head()).toEqual({ version: 2, prevVersion: 1 });
        const got = await collect(b, { from: 1 });
        expect(got).toEqual([
          { version: 1, timestamp: 1000, transaction: ["CREATE TABLE t (a, b, c, d, e, f)"] },
          { version: 2, timestamp: 2000, transaction: [params, named, "SELECT 'it''s'"] },
        ]);
      });
    });

    it("status reports the head's timestamp, also after a rewind and a reopen", async () => {
      await withNew(async (b, location) => {
        await applyChange(b, { version: 1, timestamp: 1_000, transaction: ["CREATE TABLE t (v INTEGER, tag TEXT)"] });
        await applyChange(b, { version: 2, timestamp: 2_000, transaction: tx(2) });
        await applyChange(b, { version: 3, timestamp: 3_000, transaction: tx(3) });
        expect((await b.status()).headTimestamp).toBe(3_000);
        await b.rewind();
        expect((await b.status()).headTimestamp).toBe(2_000);
        await b.close();
        const r = await open(location, "read");
        try {
          expect((await r.status()).headTimestamp).toBe(2_000);
        } finally {
          await r.close();
        }
      });
    });

    it("an acknowledged change survives close and reopen", async () => {
      await withNew(async (b, location) => {
        await seed(b, 5);
        await b.close();
        const r = await open(location, "read");
        try {
          expect(r.head()).toEqual({ version: 5, prevVersion: 4 });
          expect((await collect(r, { from: 1 })).map((c) => c.version)).toEqual([1, 2, 3, 4, 5]);
        } finally {
          await r.close();
        }
      });
    });

    it("rewind drops the last change for good, and only once", async () => {
      await withNew(async (b, location) => {
        await seed(b, 4);
        await b.rewind();
        expect(b.head()).toEqual({ version: 3, prevVersion: null });
        await expectCode(b.rewind(), "E_REWIND");
        await b.close();

        const w = await open(location, "write");
        try {
          expect(w.head()).toEqual({ version: 3, prevVersion: null });
          await expectCode(w.rewind(), "E_REWIND");
          expect((await collect(w, { from: 1 })).map((c) => c.version)).toEqual([1, 2, 3]);
        } finally {
          await w.close();
        }
      });
    });

    it("rewind after a crash never replays the rolled-back change", async () => {
      await withNew(async (b, location) => {
        await seed(b, 3);
        // The host died after the ack for 4 and before its commit, then redid 4 differently.
        await applyChange(b, { version: 4, transaction: tx(4, "rolled-back-") });
        const redo = await applyChange(b, { version: 4, transaction: tx(4, "committed-") });
        expect(redo.action).toBe("rewind-then-append");
        await applyChange(b, { version: 5, transaction: tx(5) });
        await b.close();
        const r = await open(location, "read");
        try {
          const got = await collect(r, { from: 1 });
          expect(got.map((c) => c.version)).toEqual([1, 2, 3, 4, 5]);
          expect(got[3]!.transaction).toEqual(tx(4, "committed-"));
          expect(JSON.stringify(got, (_k, v) => (typeof v === "bigint" ? String(v) : v))).not.toContain("rolled-back-");
        } finally {
          await r.close();
        }
      });
    });

    it("rewinding the only change empties the backup", async () => {
      await withNew(async (b) => {
        await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (v)"] });
        await b.rewind();
        expect(b.head()).toEqual({ version: 0, prevVersion: null });
        expect(await collect(b)).toEqual([]);
        await applyChange(b, { version: 1, transaction: ["CREATE TABLE u (v)"] });
        expect(await collect(b)).toEqual([expect.objectContaining({ version: 1, transaction: ["CREATE TABLE u (v)"] })]);
      });
    });

    it("stores snapshots byte for byte and starts streams at the newest base", async () => {
      const rng = new Rng(7);
      const big = rng.bytes(3 * 1024 * 1024 + 123); // crosses several frames
      const small = rng.bytes(10);
      await withNew(async (b) => {
        await applyChange(b, { version: 10, snapshot: snapshotOf(big) });
        for (let v = 11; v <= 13; v++) await applyChange(b, { version: v, transaction: tx(v) });
        await applyChange(b, { version: 20, snapshot: snapshotOf(small), transaction: tx(20) });
        await applyChange(b, { version: 21, transaction: tx(21) });
        const s = await b.status();
        expect(s).toMatchObject({ version: 21, prevVersion: 20, baseVersion: 20, firstVersion: 10, records: 6 });

        const latest = await collect(b);
        expect(latest.map((c) => c.version)).toEqual([20, 21]);
        expect(latest[0]!.snapshot!.equals(small)).toBe(true);
        expect(latest[0]!.transaction).toEqual(tx(20));

        const older = await collect(b, { to: 12 });
        expect(older.map((c) => c.version)).toEqual([10, 11, 12]);
        expect(older[0]!.snapshot!.equals(big)).toBe(true);

        const all = await collect(b, { from: 10 });
        expect(all.map((c) => c.version)).toEqual([10, 11, 12, 13, 20, 21]);
      });
    });

    it("refuses versions it does not hold", async () => {
      await withNew(async (b) => {
        await applyChange(b, { version: 5, snapshot: snapshotOf(Buffer.from("x")) });
        await applyChange(b, { version: 6, transaction: tx(6) });
        const err = await expectCode(collect(b, { to: 4 }), "E_RANGE");
        expect(err.message).toContain("5..6");
        await expectCode(collect(b, { to: 7 }), "E_RANGE");
      });
    });

    it("a rewound snapshot is gone", async () => {
      await withNew(async (b) => {
        await seed(b, 2);
        await applyChange(b, { version: 9, snapshot: snapshotOf(Buffer.from("first")) });
        await applyChange(b, { version: 9, snapshot: snapshotOf(Buffer.from("second")) });
        const got = await collect(b);
        expect(got.map((c) => [c.version, c.snapshot?.toString()])).toEqual([[9, "second"]]);
        expect((await b.status()).baseVersion).toBe(9);
      });
    });

    it("compaction keeps the head, the last change rewindable, and every later change", async () => {
      await withNew(async (b, location) => {
        await seed(b, 50);
        const before = await b.status();
        await b.compact({ version: 49, timestamp: 4900, snapshot: () => snapshotOf(Buffer.from("base-49")) });
        expect(b.head()).toEqual({ version: 50, prevVersion: 49 });
        const after = await b.status();
        expect(after).toMatchObject({ version: 50, baseVersion: 49, firstVersion: 49, records: 2 });
        expect(after.records).toBeLessThan(before.records);
        const got = await collect(b);
        expect(got.map((c) => c.version)).toEqual([49, 50]);
        expect(got[0]).toMatchObject({ timestamp: 4900 });
        expect(got[0]!.snapshot!.toString()).toBe("base-49");
        expect(got[1]!.transaction).toEqual(tx(50));

        await b.rewind();
        await applyChange(b, { version: 50, transaction: tx(50, "again") });
        await applyChange(b, { version: 51, transaction: tx(51) });
        await b.close();
        const r = await open(location, "read");
        try {
          expect(r.head()).toEqual({ version: 51, prevVersion: 50 });
          const reread = await collect(r, { from: 49 });
          expect(reread.map((c) => c.version)).toEqual([49, 50, 51]);
          expect(reread[1]!.transaction).toEqual(tx(50, "again"));
        } finally {
          await r.close();
        }
      });
    });

    it("compaction right after a rewind keeps the head unrewindable", async () => {
      await withNew(async (b) => {
        await seed(b, 10);
        await b.rewind();
        await b.compact({ version: 9, timestamp: 9, snapshot: () => snapshotOf(Buffer.from("base-9")) });
        expect(b.head()).toEqual({ version: 9, prevVersion: null });
        await expectCode(b.rewind(), "E_REWIND");
        await applyChange(b, { version: 10, transaction: tx(10, "b") });
        expect((await collect(b, { from: 9 })).map((c) => c.version)).toEqual([9, 10]);
      });
    });

    it("changes made while a compaction runs are kept", async () => {
      await withNew(async (b) => {
        await seed(b, 20);
        const { snapshot, release } = gatedSnapshot("base-", "19");
        const compaction = b.compact({ version: 19, timestamp: 19, snapshot });
        for (let v = 21; v <= 25; v++) await applyChange(b, { version: v, transaction: tx(v) });
        await applyChange(b, { version: 25, transaction: tx(25, "redo") });
        release();
        await compaction;
        expect(b.head()).toEqual({ version: 25, prevVersion: 24 });
        const got = await collect(b, { from: 19 });
        expect(got.map((c) => c.version)).toEqual([19, 20, 21, 22, 23, 24, 25]);
        expect(got.at(-1)!.transaction).toEqual(tx(25, "redo"));
      });
    });

    it("rewinds and redos while a compaction runs keep the base's place: every live change follows it", async () => {
      await withNew(async (b, location) => {
        await seed(b, 20);
        const { snapshot, release } = gatedSnapshot("base-", "19");
        // The base is the change before the head: where its record ends is taken at the start.
        const compaction = b.compact({ version: 19, timestamp: 19, snapshot });
        await b.rewind();
        await applyChange(b, { version: 20, transaction: tx(20, "after the rewind") });
        await applyChange(b, { version: 21, transaction: tx(21) });
        await applyChange(b, { version: 21, transaction: tx(21, "redo") });
        await applyChange(b, { version: 22, transaction: tx(22) });
        await b.rewind();
        release();
        await compaction;
        expect(b.head()).toEqual({ version: 21, prevVersion: null });
        const want = [
          [19, undefined],
          [20, tx(20, "after the rewind")],
          [21, tx(21, "redo")],
        ];
        const got = await collect(b, { from: 19 });
        expect(got.map((c) => [c.version, c.transaction])).toEqual(want);
        expect(got[0]!.snapshot!.toString()).toBe("base-19");
        await b.close();
        const r = await open(location, "read");
        try {
          expect(r.head()).toEqual({ version: 21, prevVersion: null });
          expect((await r.status()).baseVersion).toBe(19);
          expect((await collect(r, { from: 19 })).map((c) => [c.version, c.transaction])).toEqual(want);
        } finally {
          await r.close();
        }
      });
    });

    it("a reader sees a consistent view while the writer continues", async () => {
      await withNew(async (b, location) => {
        await seed(b, 10);
        const r = await open(location, "read");
        try {
          await applyChange(b, { version: 11, transaction: tx(11) });
          expect(r.head().version).toBe(10);
          expect((await collect(r, { from: 1 })).map((c) => c.version)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
          await expectCode(r.addChange({ version: 12, timestamp: 0, transaction: tx(12) }), "E_CLOSED");
        } finally {
          await r.close();
        }
      });
    });

    it("a stream that began before a compaction still reads its base", async () => {
      await withNew(async (b) => {
        await applyChange(b, { version: 1, snapshot: snapshotOf(Buffer.from("old base")) });
        for (let v = 2; v <= 6; v++) await applyChange(b, { version: v, transaction: tx(v) });
        const it = b.streamChanges({ from: 1 })[Symbol.asyncIterator]();
        const first = await it.next();
        expect(first.value?.version).toBe(1);
        await b.compact({ version: 5, timestamp: 5, snapshot: () => snapshotOf(Buffer.from("new base")) });
        const parts: Buffer[] = [];
        for await (const chunk of first.value!.snapshot!.open()) parts.push(chunk);
        expect(Buffer.concat(parts).toString()).toBe("old base");
        const rest: number[] = [];
        for (let r = await it.next(); !r.done; r = await it.next()) rest.push(r.value.version);
        expect(rest).toEqual([2, 3, 4, 5, 6]);
        expect((await collect(b)).map((c) => c.version)).toEqual([5, 6]);
      });
    });

    it("retention keeps older bases, so that older versions still restore", async () => {
      const location = await harness.newLocation();
      const b = await open(location, "create");
      try {
        await seed(b, 20);
        await b.compact({ version: 19, timestamp: 19, snapshot: () => snapshotOf(Buffer.from("base-19")) });
        for (let v = 21; v <= 30; v++) await applyChange(b, { version: v, transaction: tx(v) });
        await b.compact({ version: 29, timestamp: 29, snapshot: () => snapshotOf(Buffer.from("base-29")) });
      } finally {
        await b.close();
      }
      // Without retention, only the live generation is left.
      const none = await open(location, "read");
      expect(await none.status()).toMatchObject({ firstVersion: 29, generations: [expect.objectContaining({ baseVersion: 29, firstVersion: 29, lastVersion: 30 })] });
      await none.close();

      const kept = await harness.newLocation();
      const k = await openBackend(kept, { ...harness.options, mode: "create", retention: { bases: 1 } });
      try {
        await seed(k, 20);
        await k.compact({ version: 19, timestamp: 19, snapshot: () => snapshotOf(Buffer.from("base-19")) });
        for (let v = 21; v <= 30; v++) await applyChange(k, { version: v, transaction: tx(v) });
        await k.compact({ version: 29, timestamp: 29, snapshot: () => snapshotOf(Buffer.from("base-29")) });
      } finally {
        await k.close();
      }
      // A later writer that says nothing about retention keeps the backup's own setting.
      const w = await open(kept, "write");
      try {
        const s = await w.status();
        expect(s.firstVersion).toBe(19);
        expect(s.generations.map((g) => g.baseVersion)).toEqual([19, 29]);
        const older = await collect(w, { to: 22 });
        expect(older.map((c) => c.version)).toEqual([19, 20, 21, 22]);
        expect(older[0]!.snapshot!.toString()).toBe("base-19");
        const newer = await collect(w, { to: 30 });
        expect(newer[0]!.snapshot!.toString()).toBe("base-29");
        const err = await expectCode(collect(w, { to: 5 }), "E_RANGE");
        expect(err.message).toContain("19..30");
      } finally {
        await w.close();
      }
    });

    it.runIf(harness.exclusiveWriter)("a second writer is refused and told who holds the lock", async () => {
      await withNew(async (_b, location) => {
        const err = await expectCode(open(location, "write"), "E_LOCKED");
        expect(err.message).toMatch(new RegExp(`PID ${process.pid}|${process.pid}`));
        const r = await open(location, "read");
        await r.close();
      });
    });

    it("the version rules refuse gaps and stale changes and leave the backup as it was", async () => {
      await withNew(async (b) => {
        await seed(b, 5);
        const gap = await expectCode(applyChange(b, { version: 7, transaction: tx(7) }), "E_GAP");
        expect(gap.hint).toContain("as a new base");
        const stale = await expectCode(applyChange(b, { version: 3, transaction: tx(3) }), "E_STALE");
        expect(stale.hint).toContain("restore the host database");
        await b.rewind();
        await expectCode(applyChange(b, { version: 4, transaction: tx(4) }), "E_STALE");
        expect(b.head()).toEqual({ version: 4, prevVersion: null });
        expect((await collect(b, { from: 1 })).map((c) => c.version)).toEqual([1, 2, 3, 4]);
      });
    });

    describe("damage", () => {
      /** The live generation's id and log bytes, as stored. */
      async function liveLog(location: string): Promise<{ generation: number; bytes: Buffer }> {
        const storage = await openStorage(location, { writable: false, log: silentLogger });
        try {
          const live = (await storage.listGenerations()).at(-1)!;
          const parts: Buffer[] = [];
          for await (const c of storage.readLog(live.id, 0, live.size)) parts.push(c.bytes);
          return { generation: live.id, bytes: Buffer.concat(parts) };
        } finally {
          await storage.close();
        }
      }

      /** The live generation's records: offset, length and version of each. */
      async function liveRecords(location: string): Promise<{ generation: number; bytes: Buffer; records: { offset: number; length: number; version: number }[] }> {
        const { generation, bytes } = await liveLog(location);
        const records = [];
        for (let at = 0; at < bytes.length; ) {
          const p = probeRecord(bytes, at);
          if (p.kind !== "ok") throw new Error(`test setup: no record at ${at}`);
          records.push({ offset: at, length: p.length, version: p.version });
          at += p.length;
        }
        return { generation, bytes, records };
      }

      async function flipLogByte(location: string, generation: number, offset: number, bytes: Buffer): Promise<void> {
        await harness.overwrite(location, { generation, offset }, Buffer.from([bytes[offset]! ^ 0x10]));
      }

      async function documentOf(location: string, name: "tidemark.json" | "generations.json"): Promise<Buffer> {
        const storage = await openStorage(location, { writable: false, log: silentLogger });
        try {
          return (await storage.readDocument(name))!;
        } finally {
          await storage.close();
        }
      }

      async function putDocument(location: string, name: "tidemark.json" | "generations.json", bytes: Buffer): Promise<void> {
        const storage = await openStorage(location, { writable: true, log: silentLogger });
        try {
          await storage.writeDocument(name, bytes);
        } finally {
          await storage.close();
        }
      }

      it("a complete last record that fails its checksum is damage, not a torn tail: reported, refused by writers, never cut away", async () => {
        const location = await harness.newLocation();
        const b = await open(location, "create");
        await seed(b, 5);
        await b.close();
        const { generation, bytes, records } = await liveRecords(location);
        const last = records.at(-1)!;
        await flipLogByte(location, generation, last.offset + last.length - 6, bytes);
        const damaged = (await liveLog(location)).bytes;
        const r = await open(location, "read");
        const s = await r.status();
        expect(s.damage).toMatchObject({ intactVersion: 4 });
        expect(s.damage!.message).toMatch(/not a torn tail/);
        expect(s.version).toBe(4);
        await r.close();
        const err = await expectCode(open(location, "write"), "E_CORRUPT");
        expect(err.message).toContain("version 5");
        // Still there, byte for byte, for an operator to inspect.
        expect((await liveLog(location)).bytes.equals(damaged)).toBe(true);
        expect(damaged.equals(bytes)).toBe(false);
      });

      it("a flipped byte in tidemark.json or generations.json is an error naming the file, never another policy", async () => {
        const location = await harness.newLocation();
        const b = await open(location, "create");
        await b.close();
        const w = await openBackend(location, { ...harness.options, mode: "write", retention: { bases: 2 } });
        await seed(w, 5);
        await w.compact({ version: 4, timestamp: 4, snapshot: () => snapshotOf(Buffer.from("base-4")) });
        await w.close();
        const identity = await documentOf(location, "tidemark.json");
        const manifest = await documentOf(location, "generations.json");

        await putDocument(location, "tidemark.json", Buffer.from(identity.toString("utf8").replace('"bases"', '"basus"')));
        for (const mode of ["read", "write"] as const) {
          const err = await expectCode(open(location, mode), "E_CORRUPT");
          expect(err.message).toContain("tidemark.json");
          expect(err.message).toMatch(/checksum/);
        }
        // A key this version does not know, under a checksum that matches: refused too.
        const parsed = JSON.parse(identity.toString("utf8")) as Record<string, unknown>;
        delete parsed.crc32;
        await putDocument(location, "tidemark.json", encodeDocument({ ...parsed, retention: { basus: 2 } }));
        expect((await expectCode(open(location, "write"), "E_CORRUPT")).message).toMatch(/tidemark\.json.*basus/);
        await putDocument(location, "tidemark.json", identity);

        const flipped = Buffer.from(manifest);
        flipped[manifest.indexOf("[") + 1] = "9".charCodeAt(0);
        await putDocument(location, "generations.json", flipped);
        const err = await expectCode(open(location, "write"), "E_CORRUPT");
        expect(err.message).toContain("generations.json");
        await putDocument(location, "generations.json", manifest);
        const again = await open(location, "read");
        expect((await again.status()).generations.map((g) => g.baseVersion)).toEqual([0, 4]);
        await again.close();
      });

      it("a record that fails authentication under the backup's own key is damage, not a wrong key; a writer refuses that head", async () => {
        const keys = Keyring.load([{ id: 3, source: "env:TIDEMARK_CONFORMANCE_KEY" }], "keys", { TIDEMARK_CONFORMANCE_KEY: "a".repeat(64) });
        const location = await harness.newLocation();
        const b = await openBackend(location, { ...harness.options, mode: "create", keyring: keys });
        await seed(b, 4);
        await b.close();
        const { generation, bytes, records } = await liveRecords(location);
        const last = records.at(-1)!;
        // Alter the ciphertext and fix up the record checksum: only the cipher can tell.
        const rec = Buffer.from(bytes.subarray(last.offset, last.offset + last.length));
        rec[rec.length - 10]! ^= 0x01;
        rec.writeUInt32LE(crc32(rec, 0, rec.length - 4), rec.length - 4);
        await harness.overwrite(location, { generation, offset: last.offset }, rec);

        const r = await openBackend(location, { ...harness.options, mode: "read", keyring: keys });
        const err = await expectCode(collect(r, { from: 1 }), "E_CORRUPT");
        expect(err.message).toMatch(/damaged or tampered/);
        expect(err.message).toContain("version 4");
        await r.close();
        const w = await expectCode(openBackend(location, { ...harness.options, mode: "write", keyring: keys }), "E_CORRUPT");
        expect(w.message).toMatch(/damaged or tampered/);
      });

      it("damage in an older generation is reported, limits only restores into it, and writes go on", async () => {
        const location = await harness.newLocation();
        const b = await openBackend(location, { ...harness.options, mode: "create", retention: { bases: 3 } });
        await seed(b, 6);
        const old = await liveRecords(location);
        await b.compact({ version: 5, timestamp: 5, snapshot: () => snapshotOf(Buffer.from("base-5")) });
        await applyChange(b, { version: 7, transaction: tx(7) });
        await b.close();
        const third = old.records[2]!;
        await flipLogByte(location, old.generation, third.offset + 30, old.bytes);

        const w = await open(location, "write");
        await applyChange(w, { version: 8, transaction: tx(8) });
        const s = await w.status();
        expect(s.version).toBe(8);
        expect(s.damage).toBeUndefined();
        expect(s.generations[0]!.damage).toMatchObject({ intactVersion: 2 });
        expect((await collect(w, { from: 5 })).map((c) => c.version)).toEqual([5, 6, 7, 8]);
        expect((await collect(w, { from: 1, to: 2 })).map((c) => c.version)).toEqual([1, 2]);
        await expectCode(collect(w, { from: 3, to: 4 }), "E_CORRUPT");
        await w.close();
      });

      it("a writer keeps every snapshot while a kept generation is damaged: what its unreadable records point to is unknown", async () => {
        const location = await harness.newLocation();
        const b = await openBackend(location, { ...harness.options, mode: "create", retention: { bases: 3 } });
        await seed(b, 4);
        await b.compact({ version: 3, timestamp: 3, snapshot: () => snapshotOf(Buffer.from("base-3")) });
        await seed(b, 8, 5);
        const older = await liveRecords(location);
        await b.compact({ version: 7, timestamp: 7, snapshot: () => snapshotOf(Buffer.from("base-7")) });
        await b.close();
        const listBlobs = async () => {
          const storage = await openStorage(location, { writable: false, log: silentLogger });
          try {
            return (await storage.listBlobs()).map((x) => x.name);
          } finally {
            await storage.close();
          }
        };
        const before = await listBlobs();
        expect(before).toHaveLength(2);
        // Damage the generation based at 3 right after its base record.
        const second = older.records[1]!;
        await flipLogByte(location, older.generation, second.offset + 30, older.bytes);
        const w = await open(location, "write");
        await applyChange(w, { version: 9, transaction: tx(9) });
        await w.close();
        expect(await listBlobs()).toEqual(before);
      });

      it("a long stream of the writer's that began before a compaction reads to its end, though the compaction drops its generation", async () => {
        await withNew(async (b) => {
          await seed(b, 60);
          // The daemon's own readers (a download, a replica feeder) read through the writer.
          const it = b.streamChanges({ from: 1 })[Symbol.asyncIterator]();
          expect((await it.next()).value?.version).toBe(1);
          await b.compact({ version: 59, timestamp: 59, snapshot: () => snapshotOf(Buffer.from("base-59")) });
          const rest: number[] = [];
          for (let n = await it.next(); !n.done; n = await it.next()) rest.push(n.value.version);
          expect(rest).toEqual(Array.from({ length: 59 }, (_, i) => i + 2));
          expect((await collect(b, { from: 59 })).map((c) => c.version)).toEqual([59, 60]);
        });
      });

      it("a damaged live base snapshot is found at open: writers refuse it, status reports it", async () => {
        const location = await harness.newLocation();
        const b = await open(location, "create");
        await seed(b, 6);
        await b.compact({ version: 5, timestamp: 5, snapshot: () => snapshotOf(Buffer.alloc(300_000, 7)) });
        await b.close();
        const storage = await openStorage(location, { writable: false, log: silentLogger });
        const [blob] = await storage.listBlobs();
        await storage.close();
        await harness.overwrite(location, { blob: blob!.name, offset: 150_000 }, Buffer.from([0x42]));
        const err = await expectCode(open(location, "write"), "E_CORRUPT");
        expect(err.message).toContain(blob!.name);
        const r = await open(location, "read");
        expect((await r.status()).damage).toBeUndefined();
        expect((await r.status({ checkBase: true })).damage).toMatchObject({ intactVersion: 0, snapshot: true });
        await r.close();
      });

      it("compaction opens its snapshot only when the backup takes it", async () => {
        await withNew(async (b, location) => {
          await seed(b, 4);
          let opened = 0;
          const snapshot = () => {
            opened++;
            return snapshotOf(Buffer.from("base"));
          };
          await expect(b.compact({ version: 9, timestamp: 9, snapshot })).rejects.toThrow(/not a settled version/);
          const r = await open(location, "read");
          await expectCode(r.compact({ version: 3, timestamp: 3, snapshot }), "E_CLOSED");
          await r.close();
          expect(opened).toBe(0);
        });
      });

      it("a backup an interrupted copy left is refused until a copy --force finishes it", async () => {
        await withNew(async (b, location) => {
          await seed(b, 3);
          await b.markIncomplete("copy of somewhere");
          for (const mode of ["read", "write"] as const) {
            const err = await expectCode(open(location, mode), "E_INCOMPLETE");
            expect(err.hint).toContain("tidemark copy --force");
          }
          const forced = await openBackend(location, { ...harness.options, mode: "read", allowIncomplete: true });
          await forced.close();
          await b.markIncomplete(undefined);
          const r = await open(location, "read");
          expect(r.head().version).toBe(3);
          await r.close();
        });
      });
    });
  });
}
