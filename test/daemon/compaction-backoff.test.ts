import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { describe, expect, it, onTestFinished } from "vitest";
import { createStorage as createFileStorage } from "../../backends/file.js";
import { registerBackend } from "../../src/backup/registry.js";
import type { Storage } from "../../src/backup/storage.js";
import { COMPACTION_BACKOFF, CompactionBackoff } from "../../src/daemon/compaction-backoff.js";
import { buildConfig } from "../../src/daemon/config.js";
import { ManagedDatabase } from "../../src/daemon/managed-database.js";
import { Metrics } from "../../src/daemon/metrics.js";
import { silentLogger } from "../../src/util/logger.js";
import { waitFor } from "../helpers/daemon.js";
import { mountSmallDisk } from "../helpers/small-disk.js";
import { tmpDir } from "../helpers/tmp.js";

/**
 * Where mounting is not allowed, a stand-in is used instead and said so: the `enospc:` backend
 * below is the real file backend whose snapshot writes fail with ENOSPC half-way while
 * `standIn.full` is set.
 */
const standIn = { full: false };
registerBackend("enospc", async (url, options) => {
  const storage = await createFileStorage(pathToFileURL(url.pathname), options);
  return new Proxy(storage, {
    get(target, prop) {
      // Bound to the storage itself: its #fields are not the proxy's.
      const value = Reflect.get(target, prop) as unknown;
      if (prop !== "putBlob") return typeof value === "function" ? value.bind(target) : value;
      return (name: string, source: AsyncIterable<Uint8Array>) =>
        target.putBlob(
          name,
          (async function* () {
            for await (const chunk of source) {
              yield chunk;
              if (standIn.full) throw Object.assign(new Error("ENOSPC: no space left on device, write (stand-in)"), { code: "ENOSPC" });
            }
          })(),
        );
    },
  }) as Storage;
});

/** Fills `dir`'s file system so that `pages` blocks stay free; returns the filler to remove. */
function fillLeaving(dir: string, pages: number): string {
  const filler = path.join(dir, "filler");
  const st = fs.statfsSync(dir);
  const bytes = Math.max(0, (st.bavail - pages) * st.bsize);
  try {
    fs.writeFileSync(filler, Buffer.alloc(bytes));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
  }
  return filler;
}

function leftovers(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.endsWith(".tmp"));
}

function blobs(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.startsWith("snap-")).sort();
}

async function open(root: string, backend: string, compaction: object, metrics: Metrics): Promise<ManagedDatabase> {
  const config = buildConfig({ databases: [{ name: "db", backend, compaction }] }, root, "test");
  metrics.addDatabase("db");
  const db = await ManagedDatabase.open(config.databases[0]!, { log: silentLogger, metrics, tmpDir: path.join(root, "tmp") });
  onTestFinished(() => db.close());
  return db;
}

/** A database whose backup is on a small disk of its own (or the stand-in), its temp dir elsewhere. */
async function onSmallDisk(compaction: object) {
  const root = tmpDir();
  const disk = path.join(root, "disk");
  fs.mkdirSync(disk);
  fs.mkdirSync(path.join(root, "tmp"));
  const real = mountSmallDisk(disk);
  if (!real) console.warn("mount is not allowed here: using the enospc: stand-in instead of a real full disk");
  const dir = path.join(disk, "backup");
  const metrics = new Metrics();
  const db = await open(root, real ? dir : `enospc://${dir}`, compaction, metrics);
  return { root, disk, dir, real, metrics, db };
}

function gauge(text: string, name: string): number {
  const m = new RegExp(`^${name}\\{db="db"\\} (\\S+)$`, "m").exec(text);
  if (!m) throw new Error(`no ${name} series`);
  return Number(m[1]);
}

describe("compaction backoff", () => {
  it("waits 10 s, 20 s, 40 s, … up to 30 min after failures in a row, and starts over after a success", () => {
    const b = new CompactionBackoff(COMPACTION_BACKOFF, () => 1);
    const delays = Array.from({ length: 12 }, () => b.failed(0));
    expect(delays).toEqual([10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000, 1_280_000, 1_800_000, 1_800_000, 1_800_000, 1_800_000]);
    expect(b.status()).toEqual({ failures: 12, nextAttemptAt: new Date(1_800_000).toISOString() });
    expect(b.waiting(1_799_999)).toBe(true);
    expect(b.waiting(1_800_000)).toBe(false);
    b.succeeded();
    expect(b.status()).toEqual({ failures: 0, nextAttemptAt: null });
    expect(b.waiting(0)).toBe(false);
    expect(b.failed(0)).toBe(10_000);
    // Jitter takes up to a quarter off, never adds.
    expect(new CompactionBackoff(COMPACTION_BACKOFF, () => 0).failed(0)).toBe(7_500);
  });

  it("on a full disk, a failed compaction leaves no temp file or orphan snapshot, backs off in status and metrics, and a success resets it", async () => {
    const { root, disk, dir, real, metrics, db } = await onSmallDisk({ everyChanges: 1_000_000 });

    // Incompressible rows, so that the snapshot and the logs take several blocks each.
    const values = Array.from({ length: 30 }, () => randomBytes(2000).toString("hex"));
    await db.ingest({ version: 1, transaction: ["CREATE TABLE t (x)"] }, 0);
    for (const [i, v] of values.entries()) await db.ingest({ version: i + 2, transaction: [`INSERT INTO t VALUES (X'${v}')`] }, 0);
    const blobsBefore = blobs(dir);

    // Less and less room: the compaction fails at every write it makes (the snapshot, the
    // manifest, the new generation), until there is room enough.
    let failures = 0;
    for (let pages = 0; pages < 200; pages++) {
      const filler = real ? fillLeaving(disk, pages) : "";
      standIn.full = !real && pages < 2;
      const failedAt = Date.now();
      let failed: unknown = null;
      await db.compactNow().catch((err: unknown) => (failed = err));
      if (real) fs.rmSync(filler);
      if (failed === null) break;
      failures++;
      expect(String(failed)).toMatch(/ENOSPC/);
      expect(leftovers(dir)).toEqual([]);
      expect(fs.readdirSync(path.join(root, "tmp"))).toEqual([]);
      expect(blobs(dir)).toEqual(blobsBefore);
      const { compaction } = await db.status();
      expect(compaction.failures).toBe(failures);
      const delay = Date.parse(compaction.nextAttemptAt!) - failedAt;
      const full = Math.min(COMPACTION_BACKOFF.baseMs * 2 ** (failures - 1), COMPACTION_BACKOFF.maxMs);
      expect(delay).toBeGreaterThanOrEqual(full * 0.75 - 5);
      expect(delay).toBeLessThanOrEqual(full + 1_000);
      const text = await metrics.registry.metrics();
      expect(gauge(text, "tidemark_compaction_consecutive_failures")).toBe(failures);
      expect(gauge(text, "tidemark_compaction_next_attempt_timestamp_seconds")).toBe(Date.parse(compaction.nextAttemptAt!) / 1000);
    }
    expect(failures).toBeGreaterThanOrEqual(2);
    const { compaction, lastCompaction } = await db.status();
    expect(compaction).toEqual({ failures: 0, nextAttemptAt: null });
    expect(lastCompaction?.baseVersion).toBe(values.length);
    expect(gauge(await metrics.registry.metrics(), "tidemark_compaction_consecutive_failures")).toBe(0);
    expect(leftovers(dir)).toEqual([]);

    // Nothing acknowledged was lost.
    const out = path.join(root, "restored.db");
    await db.restoreTo(out);
    const restored = new Database(out, { readonly: true });
    expect(restored.prepare("SELECT hex(x) FROM t ORDER BY rowid").pluck().all()).toEqual(values.map((v) => v.toUpperCase()));
    restored.close();
  });

  it("does not retry a scheduled compaction before its back-off ends, and then does by itself", async () => {
    const { disk, dir, real, metrics, db } = await onSmallDisk({ every: "1s" });
    await db.ingest({ version: 1, transaction: ["CREATE TABLE t (x)"] }, 0);
    for (let v = 2; v <= 4; v++) await db.ingest({ version: v, transaction: [`INSERT INTO t VALUES (${v})`] }, 0);
    const filler = real ? fillLeaving(disk, 0) : "";
    standIn.full = !real;
    const results = async (result: string) => Number(new RegExp(`^tidemark_compactions_total\\{db="db",result="${result}"\\} (\\d+)$`, "m").exec(await metrics.registry.metrics())![1]);
    await waitFor(async () => (await results("error")) === 1, 10_000);
    const { compaction } = await db.status();
    expect(compaction.failures).toBe(1);
    // The schedule asks every second; the back-off (at least 7.5 s) holds it: no retry storm.
    await new Promise((r) => setTimeout(r, 3_000));
    expect(await results("error")).toBe(1);
    if (real) fs.rmSync(filler);
    standIn.full = false;
    // Once the back-off ends, the scheduler tries again by itself, succeeds, and starts over.
    await waitFor(async () => (await results("ok")) === 1, 15_000);
    expect((await db.status()).compaction).toEqual({ failures: 0, nextAttemptAt: null });
    expect(leftovers(dir)).toEqual([]);
  }, 30_000);
});
