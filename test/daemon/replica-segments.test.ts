/**
 * A replica's request bill: catch-up and steady state write segments of many changes, one
 * object each on S3 (this run's real S3 server), and the replica restores like the primary.
 */
import path from "node:path";
import { performance } from "node:perf_hooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openBackend, openOrCreateBackend } from "../../src/backup/registry.js";
import { ReplicaFeeder } from "../../src/daemon/replica.js";
import { applyChange } from "../../src/ops/ingest.js";
import { silentLogger } from "../../src/util/logger.js";
import { runCli } from "../helpers/cli.js";
import { startS3, type S3Server } from "../helpers/s3.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3.stop();
});

const row = (v: number) => ({ version: v, transaction: [{ sql: "INSERT INTO t VALUES (?, ?)", params: [v, `row ${v} ${"x".repeat(100)}`] }] });

async function inStep(feeder: ReplicaFeeder, version: number): Promise<void> {
  for (;;) {
    const s = await feeder.status();
    if (s.error) throw new Error(`replica failed: ${s.error.message}`);
    if (s.version === version) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("replica segments", () => {
  it("a catch-up of 3000 changes takes a few objects, changes while in step one object per interval, and the replica restores like the primary", async () => {
    const dir = tmpDir();
    const primaryDir = path.join(dir, "primary");
    const primary = (await openOrCreateBackend(primaryDir, {})).backend;
    await applyChange(primary, { version: 1, transaction: ["CREATE TABLE t (v INTEGER, note TEXT)"] });
    for (let v = 2; v <= 3000; v++) await applyChange(primary, row(v));

    const location = s3.location();
    const prefix = decodeURIComponent(new URL(location).pathname).replace(/^\/+|\/+$/g, "");
    const logObjects = async () => (await s3.keys(`${prefix}/log`)).length;
    const feeder = new ReplicaFeeder(primary, location, { log: silentLogger });
    feeder.start();
    try {
      await inStep(feeder, 3000);
      // Object 0 (the empty generation from init) and the catch-up: 3000 changes of ~130 bytes
      // in one segment.
      expect(await logObjects()).toBe(2);

      // In step: 400 changes while the feeder runs, each notified as the daemon does.
      const before = await logObjects();
      const start = performance.now();
      for (let v = 3001; v <= 3400; v++) {
        await applyChange(primary, row(v));
        feeder.notify();
      }
      await inStep(feeder, 3400);
      const seconds = (performance.now() - start) / 1000;
      const written = (await logObjects()) - before;
      // At most one write per 1 s interval (plus the one a pass already under way makes).
      expect(written).toBeGreaterThan(0);
      expect(written).toBeLessThanOrEqual(Math.ceil(seconds) + 1);
      expect(written).toBeLessThan(400 / 10);
    } finally {
      await feeder.close();
      await primary.close();
    }

    const restored = [path.join(dir, "primary.db"), path.join(dir, "replica.db")];
    for (const [loc, out] of [[primaryDir, restored[0]!], [location, restored[1]!]] as const) {
      const r = await runCli(["restore", loc, out]);
      expect(r.code, r.stderr).toBe(0);
    }
    expectSameDb(restored[1]!, restored[0]!);
    const replica = await openBackend(location, { mode: "read" });
    expect(replica.head()).toEqual({ version: 3400, prevVersion: 3399 });
    await replica.close();
  });
});
