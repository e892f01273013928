/**
 * S3 benchmarks against s3rver on 127.0.0.1, and against an external server when
 * TIDEMARK_TEST_S3_ACCESS_KEY_ID etc. name one (as for the tests: `test/helpers/s3.ts`; the
 * radosgw of `test/fixtures/rgw/rgw-up.sh`), each against its limit in the same run:
 *
 *   S3 ack latency        applyChange on the S3 backend vs a raw PutObject of the same bytes
 *                         on the same server (target: ≤ 1.3× at p50)
 *   restore from S3       a reader's open + restore from S3 (uncompacted: one object per
 *                         change), as `tidemark restore` runs it, vs the same from the file
 *                         backend, same backup
 *   replica lag           an S3 replica's lag behind a file primary under a steady ingest load
 *   requests              log objects written per 1000 changes: the primary (one per ack) vs
 *                         the replica (segments)
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CreateBucketCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { openBackend } from "../src/backup/registry.js";
import { encodeChangeRecord } from "../src/format/record-codec.js";
import { connect } from "../src/host/client.js";
import { copyBackup } from "../src/ops/copy.js";
import { applyChange } from "../src/ops/ingest.js";
import { restore } from "../src/ops/restore.js";
import { ms, percentile, timed, type Row } from "./table.js";

const ROOT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const S3RVER = path.join(ROOT_DIR, "test/fixtures/s3rver.mjs");
const CLI = path.join(ROOT_DIR, "dist/src/cli.js");
const BUCKET = "tidemark-bench";
const CREATE = ["CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)"];
const statement = (v: number) => [`INSERT INTO ledger VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')`];

async function startS3rver(dir: string): Promise<{ child: ChildProcess; endpoint: string }> {
  fs.mkdirSync(dir, { recursive: true });
  const child = spawn(process.execPath, ["--openssl-legacy-provider", S3RVER, dir, "0", BUCKET], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d;
      if (out.includes("\n")) resolve(JSON.parse(out).port);
    });
  });
  return { child, endpoint: `http://127.0.0.1:${port}` };
}

/** One S3 server to measure. */
interface Server {
  readonly name: string;
  readonly endpoint: string;
  readonly bucket: string;
  readonly keys: { readonly id: string; readonly secret: string };
  readonly raw: S3Client;
  location(prefix: string): string;
}

function server(name: string, endpoint: string, bucket: string, id: string, secret: string): Server {
  const raw = new S3Client({
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    maxAttempts: 1,
    credentials: { accessKeyId: id, secretAccessKey: secret },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
  const run = Date.now().toString(36);
  return {
    name,
    endpoint,
    bucket,
    keys: { id, secret },
    raw,
    location: (prefix) => `s3://${bucket}/bench-${run}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&region=us-east-1&forcePathStyle=true`,
  };
}

/** Runs every S3 benchmark into `rows`, on s3rver and on the external server if one is named. */
export async function benchS3(root: string, rows: Row[], restoreChanges: number): Promise<void> {
  const { child, endpoint } = await startS3rver(path.join(root, "s3rver"));
  const servers = [server("s3rver", endpoint, BUCKET, "S3RVER", "S3RVER")];
  const env = process.env;
  if (env.TIDEMARK_TEST_S3_ACCESS_KEY_ID && env.TIDEMARK_TEST_S3_SECRET_ACCESS_KEY && env.TIDEMARK_TEST_S3_ENDPOINT) {
    const ext = server(env.TIDEMARK_TEST_S3_NAME ?? "external", env.TIDEMARK_TEST_S3_ENDPOINT, env.TIDEMARK_TEST_S3_BUCKET ?? BUCKET, env.TIDEMARK_TEST_S3_ACCESS_KEY_ID, env.TIDEMARK_TEST_S3_SECRET_ACCESS_KEY);
    await ext.raw.send(new CreateBucketCommand({ Bucket: ext.bucket })).catch((err: Error) => {
      if (!["BucketAlreadyOwnedByYou", "BucketAlreadyExists"].includes(err.name)) throw err;
    });
    servers.push(ext);
  } else {
    process.stderr.write("bench: no external S3 server (TIDEMARK_TEST_S3_*): the S3 rows are s3rver's only\n");
  }
  try {
    for (const s of servers) {
      // The backends, and the daemon the replica bench starts, take the keys from here.
      process.env.AWS_ACCESS_KEY_ID = s.keys.id;
      process.env.AWS_SECRET_ACCESS_KEY = s.keys.secret;
      await ackLatency(s, rows);
      await restoreFromS3(root, s, rows, restoreChanges);
      await replicaLag(root, s, rows);
      s.raw.destroy();
    }
  } finally {
    child.kill("SIGTERM");
  }
}

/** Log objects under a location's prefix. */
async function logObjects(s: Server, location: string): Promise<number> {
  const prefix = `${decodeURIComponent(new URL(location).pathname).replace(/^\/+|\/+$/g, "")}/log/`;
  let n = 0;
  let token: string | undefined;
  do {
    const page = await s.raw.send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: prefix, ...(token && { ContinuationToken: token }) }));
    n += page.KeyCount ?? page.Contents?.length ?? 0;
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return n;
}

async function ackLatency(s: Server, rows: Row[]): Promise<void> {
  const location = s.location("ack");
  const backend = await openBackend(location, { mode: "create" });
  const raw = s.raw;
  const BUCKET = s.bucket;
  await applyChange(backend, { version: 1, transaction: CREATE });
  const ours: number[] = [];
  const baseline: number[] = [];
  for (let v = 2; v <= 801; v++) {
    const change = { version: v, timestamp: Date.now(), transaction: statement(v) };
    const body = encodeChangeRecord(change);
    const put = () => raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: `raw/changes/${String(v).padStart(20, "0")}`, Body: body }));
    if (v % 2) {
      ours.push(await timed(() => applyChange(backend, change)));
      baseline.push(await timed(put));
    } else {
      baseline.push(await timed(put));
      ours.push(await timed(() => applyChange(backend, change)));
    }
  }
  await backend.close();
  const objects = await logObjects(s, location);
  rows.push({
    target: `S3 primary: log objects per 1000 changes (${s.name})`,
    measured: `${Math.round((objects - 1) / 0.801)} PUTs`,
    limit: "1000 (one PUT per ack)",
    ratio: (objects - 1) / 801,
    goal: "report",
    ok: true,
  });
  for (const p of [50, 99]) {
    const a = percentile(ours, p);
    const b = percentile(baseline, p);
    rows.push({
      target: `S3 ack latency p${p} (${s.name})`,
      measured: ms(a),
      limit: `${ms(b)} raw PutObject`,
      ratio: a / b,
      goal: p === 50 ? "≤ 1.3" : "report",
      ok: p === 50 ? a / b <= 1.3 : true,
    });
  }
}

async function restoreFromS3(root: string, server: Server, rows: Row[], changes: number): Promise<void> {
  const location = server.location("restore");
  const dir = path.join(root, `s3-restore-${server.name}`);
  const file = await openBackend(path.join(dir, "file"), { mode: "create" });
  await applyChange(file, { version: 1, transaction: CREATE });
  for (let v = 2; v <= changes; v++) await applyChange(file, { version: v, transaction: statement(v) });
  const s3 = await openBackend(location, { mode: "create" });
  await copyBackup(file, s3);
  await file.close();
  await s3.close();
  // As `tidemark restore` runs it: a reader's open, then the restore.
  const restoreFrom = (from: string, dest: string) => async () => {
    const reader = await openBackend(from, { mode: "read" });
    try {
      await restore(reader, path.join(dir, dest), { inline: true });
    } finally {
      await reader.close();
    }
  };
  const cpu0 = process.cpuUsage();
  const fromFile = await timed(restoreFrom(path.join(dir, "file"), "from-file.db"));
  const cpu1 = process.cpuUsage();
  const fromS3 = await timed(restoreFrom(location, "from-s3.db"));
  const cpu2 = process.cpuUsage();
  const cpuMs = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage) => (b.user - a.user + b.system - a.system) / 1000;
  const rate = (t: number, cpu: number) => `${Math.round(changes / (t / 1000)).toLocaleString("en-US")} changes/s (${ms(t)} wall, ${ms(cpu)} CPU)`;
  rows.push({
    target: `restore from S3, ${changes.toLocaleString("en-US")} uncompacted changes, open + restore (${server.name})`,
    measured: rate(fromS3, cpuMs(cpu1, cpu2)),
    limit: `${rate(fromFile, cpuMs(cpu0, cpu1))} from the file backend`,
    ratio: fromFile / fromS3,
    goal: "report",
    ok: true,
  });
}

async function replicaLag(root: string, server: Server, rows: Row[]): Promise<void> {
  const replica = server.location("replica");
  const dir = path.join(root, `replica-lag-${server.name}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, "tidemark.json"),
    JSON.stringify({ log: { level: "warn" }, databases: [{ name: "db", backend: "primary", replicas: [replica] }] }),
  );
  const daemon = spawn(process.execPath, [CLI, "daemon", "--config", "tidemark.json"], { cwd: dir, stdio: ["ignore", "ignore", "inherit"] });
  const socket = path.join(dir, "tidemark.sock");
  for (let i = 0; i < 500 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 20));
  const client = connect({ socket, db: "db" });
  try {
    await client.addChange({ version: 1, transaction: CREATE });
    const rate = 100; // changes per second
    const lagVersions: number[] = [];
    const lagSeconds: number[] = [];
    let v = 2;
    const end = performance.now() + 5000;
    const sampler = setInterval(() => {
      void client.status().then((s) => {
        lagVersions.push(s.replicas[0]!.lagVersions);
        lagSeconds.push(s.replicas[0]!.lagSeconds);
      });
    }, 100);
    while (performance.now() < end) {
      const started = performance.now();
      await client.addChange({ version: v, transaction: statement(v) });
      v++;
      await new Promise((r) => setTimeout(r, Math.max(0, 1000 / rate - (performance.now() - started))));
    }
    clearInterval(sampler);
    // Let the replica catch up, then count what it wrote for the changes it copied.
    for (let i = 0; i < 200; i++) {
      const st = await client.status();
      if (st.replicas[0]!.lagVersions === 0 && st.replicas[0]!.version === v - 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const objects = (await logObjects(server, replica)) - 1;
    rows.push({
      target: `S3 replica: log objects per 1000 changes at ${rate} changes/s (${server.name})`,
      measured: `${((objects * 1000) / (v - 1)).toFixed(1)} PUTs`,
      limit: "1000 (one PUT per change, as the primary)",
      ratio: objects / (v - 1),
      goal: "report",
      ok: true,
    });
    const p50 = percentile(lagVersions, 50);
    rows.push({
      target: `S3 replica lag at ${rate} changes/s (${server.name})`,
      measured: `p50 ${p50} versions, max ${Math.max(...lagVersions)}`,
      limit: `max ${Math.max(...lagSeconds).toFixed(2)} s behind`,
      ratio: p50,
      goal: "report",
      ok: true,
    });
  } finally {
    client.close();
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.once("exit", r));
  }
}
