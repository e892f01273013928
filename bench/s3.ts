/**
 * S3 benchmarks against s3rver on 127.0.0.1, each against its limit in the same run:
 *
 *   S3 ack latency        applyChange on the S3 backend vs a raw PutObject of the same bytes
 *                         on the same server (target: ≤ 1.3× at p50)
 *   restore from S3       restore throughput from S3 vs from the file backend, same backup
 *   replica lag           an S3 replica's lag behind a file primary under a steady ingest load
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
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

/** Runs every S3 benchmark into `rows`. */
export async function benchS3(root: string, rows: Row[], restoreChanges: number): Promise<void> {
  process.env.AWS_ACCESS_KEY_ID = "S3RVER";
  process.env.AWS_SECRET_ACCESS_KEY = "S3RVER";
  const { child, endpoint } = await startS3rver(path.join(root, "s3rver"));
  const location = (prefix: string) => `s3://${BUCKET}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&region=us-east-1&forcePathStyle=true`;
  try {
    await ackLatency(location("ack"), endpoint, rows);
    await restoreFromS3(root, location("restore"), rows, restoreChanges);
    await replicaLag(root, location("replica"), rows);
  } finally {
    child.kill("SIGTERM");
  }
}

async function ackLatency(location: string, endpoint: string, rows: Row[]): Promise<void> {
  const backend = await openBackend(location, { mode: "create" });
  const raw = new S3Client({
    endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    maxAttempts: 1,
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
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
  raw.destroy();
  for (const p of [50, 99]) {
    const a = percentile(ours, p);
    const b = percentile(baseline, p);
    rows.push({
      target: `S3 ack latency p${p} (s3rver)`,
      measured: ms(a),
      limit: `${ms(b)} raw PutObject`,
      ratio: a / b,
      goal: p === 50 ? "≤ 1.3" : "report",
      ok: p === 50 ? a / b <= 1.3 : true,
    });
  }
}

async function restoreFromS3(root: string, location: string, rows: Row[], changes: number): Promise<void> {
  const dir = path.join(root, "s3-restore");
  const file = await openBackend(path.join(dir, "file"), { mode: "create" });
  await applyChange(file, { version: 1, transaction: CREATE });
  for (let v = 2; v <= changes; v++) await applyChange(file, { version: v, transaction: statement(v) });
  const s3 = await openBackend(location, { mode: "create" });
  await copyBackup(file, s3);
  const fromFile = await timed(() => restore(file, path.join(dir, "from-file.db")));
  const fromS3 = await timed(() => restore(s3, path.join(dir, "from-s3.db")));
  await file.close();
  await s3.close();
  const rate = (t: number) => `${Math.round(changes / (t / 1000)).toLocaleString("en-US")} changes/s`;
  rows.push({
    target: `restore from S3 (${changes.toLocaleString("en-US")} changes)`,
    measured: rate(fromS3),
    limit: `${rate(fromFile)} from the file backend`,
    ratio: fromFile / fromS3,
    goal: "report",
    ok: true,
  });
}

async function replicaLag(root: string, replica: string, rows: Row[]): Promise<void> {
  const dir = path.join(root, "replica-lag");
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
    const p50 = percentile(lagVersions, 50);
    rows.push({
      target: `S3 replica lag at ${rate} changes/s`,
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
