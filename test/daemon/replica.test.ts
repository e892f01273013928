/**
 * Replicas: a daemon database with a file primary, an S3 replica (s3rver) and a file replica.
 */
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { request, startDaemon, waitFor, type DaemonProcess } from "../helpers/daemon.js";
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

const change = (version: number, sql: string) => JSON.stringify({ version, transaction: [sql] });

async function post(d: DaemonProcess, version: number, sql: string): Promise<void> {
  const r = await request(d.socket, "POST", "/v1/dbs/db/changes", change(version, sql));
  expect(r.status, r.body.toString()).toBe(200);
}

async function inSync(d: DaemonProcess): Promise<void> {
  await waitFor(
    async () => {
      const s = (await request(d.socket, "GET", "/v1/dbs/db")).json();
      return s.replicas.every((r: { version: number; lagVersions: number; error?: unknown }) => r.version === s.version && r.lagVersions === 0 && !r.error);
    },
    20_000,
    d.logs,
  );
}

/** Restores every location and checks each equals the primary's restore. */
async function expectSameRestores(dir: string, locations: string[], tag: string): Promise<void> {
  const files: string[] = [];
  for (const [i, loc] of locations.entries()) {
    const out = path.join(dir, `${tag}-${i}.db`);
    const r = await runCli(["restore", loc, out]);
    expect(r.code, `${loc}: ${r.stderr}`).toBe(0);
    files.push(out);
  }
  for (const f of files.slice(1)) expectSameDb(f, files[0]!);
}

describe("replicas", () => {
  it("follow the primary through changes, rewinds, a redo, a compaction and an outage, and restore identically", async () => {
    const dir = tmpDir();
    const s3Replica = s3.location();
    const fileReplica = path.join(dir, "replica");
    const primary = path.join(dir, "primary");
    const d = await startDaemon(dir, { databases: [{ name: "db", backend: "primary", replicas: [s3Replica, "replica"] }] });
    const all = [primary, s3Replica, fileReplica];
    try {
      await post(d, 1, "CREATE TABLE t (x TEXT)");
      for (let v = 2; v <= 40; v++) await post(d, v, `INSERT INTO t VALUES ('row ${v}')`);
      await inSync(d);
      const status = (await request(d.socket, "GET", "/v1/dbs/db")).json();
      expect(status.replicas).toEqual([
        { location: s3Replica, version: 40, lagVersions: 0, lagSeconds: 0 },
        { location: fileReplica, version: 40, lagVersions: 0, lagSeconds: 0 },
      ]);
      await expectSameRestores(dir, all, "a");
      const cli = await runCli(["status", "--socket", d.socket, "--db", "db"]);
      expect(cli.code, cli.stderr).toBe(0);
      expect(cli.stdout).toMatch(/^replica\s+s3:\/\/.*: version 40, 0 behind \(0\.0 s\), ok$/m);
      expect(cli.stdout).toMatch(new RegExp(`^replica\\s+${fileReplica}: version 40, 0 behind`, "m"));

      // A rewind the host did not redo, then one it redid differently.
      expect((await request(d.socket, "POST", "/v1/dbs/db/rewind")).status).toBe(200);
      await inSync(d);
      await post(d, 40, "INSERT INTO t VALUES ('redo of 40')");
      await post(d, 41, "INSERT INTO t VALUES ('row 41')");
      await post(d, 41, "INSERT INTO t VALUES ('redo of 41')");
      await inSync(d);
      await expectSameRestores(dir, all, "b");

      // A compaction propagates as the same base.
      const compacted = (await request(d.socket, "POST", "/v1/dbs/db/compact")).json();
      expect(compacted.baseVersion).toBe(40);
      await waitFor(async () => {
        for (const loc of [s3Replica, fileReplica]) {
          const s = JSON.parse((await runCli(["status", loc, "--json"])).stdout);
          if (s.baseVersion !== 40) return false;
        }
        return true;
      }, 20_000, d.logs);

      // The S3 replica goes down; the primary keeps acknowledging; the replica catches up.
      await s3.kill();
      for (let v = 42; v <= 60; v++) await post(d, v, `INSERT INTO t VALUES ('row ${v}')`);
      await waitFor(async () => {
        const s = (await request(d.socket, "GET", "/v1/dbs/db")).json();
        return s.replicas[0].lagVersions > 0 && s.replicas[0].error !== undefined && s.replicas[1].lagVersions === 0;
      }, 20_000, d.logs);
      const metrics = (await request(d.socket, "GET", "/metrics")).body.toString();
      expect(metrics).toMatch(/^tidemark_replica_lag_versions\{db="db",replica="s3:\/\/[^"]+"\} [1-9]\d*$/m);
      expect(metrics).toMatch(/^tidemark_replica_lag_seconds\{db="db",replica="[^"]+"\} /m);
      await s3.start();
      await inSync(d);
      await expectSameRestores(dir, all, "c");
    } finally {
      expect(await d.stop()).toBe(0);
    }
  });

  it("a new replica of a backup that retains older generations starts from the live base", async () => {
    const dir = tmpDir();
    const primary = path.join(dir, "primary");
    const cli = async (args: string[], input?: string) => {
      const r = await runCli(args, input === undefined ? {} : { input });
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
    };
    const lines = (from: number, to: number) =>
      `${Array.from({ length: to - from + 1 }, (_, i) => change(from + i, from + i === 1 ? "CREATE TABLE t (x TEXT)" : `INSERT INTO t VALUES ('row ${from + i}')`)).join("\n")}\n`;
    await cli(["init", primary, "--keep-bases", "3"]);
    await cli(["ingest", primary], lines(1, 20));
    await cli(["compact", primary, "-q"]);
    await cli(["ingest", primary], lines(21, 30));
    await cli(["compact", primary, "-q"]);
    const d = await startDaemon(dir, { databases: [{ name: "db", backend: "primary", replicas: ["replica"] }] });
    try {
      await inSync(d);
      await post(d, 31, "INSERT INTO t VALUES ('row 31')");
      await inSync(d);
      const status = (await request(d.socket, "GET", "/v1/dbs/db")).json();
      expect(status.replicas).toEqual([{ location: path.join(dir, "replica"), version: 31, lagVersions: 0, lagSeconds: 0 }]);
    } finally {
      expect(await d.stop()).toBe(0);
    }
    const replica = JSON.parse((await runCli(["status", path.join(dir, "replica"), "--json"])).stdout);
    expect(replica).toMatchObject({ version: 31, baseVersion: 29, firstVersion: 29 });
    await expectSameRestores(dir, [primary, path.join(dir, "replica")], "live");
  });
});
