/**
 * `npm run bench`: each target measured against its limit in the same run, printed as ratios.
 *
 *   ack latency      tidemark applyChange on the file backend vs a raw append + fdatasync of
 *                    the same bytes, same process, same directory (p50 and p99)
 *   restore          restore() vs better-sqlite3 executing the same statements in one transaction
 *   compaction       compact() of 100k changes from the backup's warm shadow (as the daemon
 *                    compacts) vs a backup-API copy of that same shadow file and its fsync; and compact()
 *                    without a shadow (a replay, as `tidemark compact` runs it) vs that replay
 *                    plus a backup-API snapshot
 *   restore RSS      peak RSS of a restore whose snapshot is 1 GiB (a child process)
 *
 *   daemon           see bench/daemon.ts: ack over the socket, group commit, compaction stall
 *   s3               see bench/s3.ts: S3 ack latency, restore from S3, replica lag
 *   protection       see bench/protection.ts: ack latency, restore throughput and bytes stored
 *                    with gzip, brotli, AES-256-GCM and brotli + AES-256-GCM, each vs none
 *   cln              see bench/cln.ts: the Core Lightning plugin's cost per db_write beyond one
 *                    fdatasync, direct and through the daemon, with CPU time
 *   watch            see bench/watch.ts: capture lag at 1,000 tx/s, the app's commit latency
 *                    with and without watch, restore CPU vs cp, bytes per captured transaction
 *   cli              see bench/cli.ts: start-up (--version, status) vs node -e 0, and
 *                    `tidemark ingest` per change vs a raw append+fdatasync writer, wall and CPU
 *   shadow           see bench/shadow.ts: the validated ack (shadow check) vs raw append+fdatasync
 *   open             see bench/open.ts: a backup's open with its log index vs the full scan
 *
 * Environment: BENCH_DIR (default: a temp dir), BENCH_CHANGES (default 100000),
 * BENCH_SNAPSHOT_MB (default 1024; 0 skips the RSS run), BENCH_S3_CHANGES (default 10000),
 * BENCH_PROTECTION_CHANGES (default 50000), BENCH_CLN_WRITES (default 2000),
 * BENCH_WATCH_TX (default 5000), BENCH_WATCH_MB (default 32),
 * BENCH_CLI_RUNS (default 20), BENCH_INGEST_CHANGES (default 20000), BENCH_SHADOW_ROUNDS (default 4000),
 * BENCH_OPEN_CHANGES (default BENCH_CHANGES), BENCH_OPEN_ROUNDS (default 5),
 * BENCH_ONLY (core,daemon,s3,protection,cln,watch,read,cli,shadow,open; default all); read: see bench/read-path.ts, cli: bench/cli.ts,
 * open: bench/open.ts (opening a backup with and without its log index).
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { openBackend } from "../src/backup/registry.js";
import { encodeChangeRecord } from "../src/format/record-codec.js";
import { compact, type CompactionStats } from "../src/ops/compaction.js";
import { applyChange, shadowOf } from "../src/ops/ingest.js";
import { restore } from "../src/ops/restore.js";
import { writeAll } from "../src/util/durable-fs.js";
import { benchCli } from "./cli.js";
import { benchCln } from "./cln.js";
import { benchDaemon } from "./daemon.js";
import { benchOpen } from "./open.js";
import { benchProtection } from "./protection.js";
import { benchReadPath, bigDatabase, measured, replayLimit, type Times } from "./read-path.js";
import { benchS3 } from "./s3.js";
import { benchShadow } from "./shadow.js";
import { benchWatch } from "./watch.js";
import { ms, percentile, printTable, type Row } from "./table.js";

const ROOT = fs.mkdtempSync(path.join(process.env.BENCH_DIR ?? os.tmpdir(), "tidemark-bench-"));
// The shadows of the backups benched (src/ops/shadow.ts) stay inside the bench directory.
process.env.TIDEMARK_SHADOW_DIR ??= path.join(ROOT, "shadows");
const CHANGES = Number(process.env.BENCH_CHANGES ?? 100_000);
const SNAPSHOT_MB = Number(process.env.BENCH_SNAPSHOT_MB ?? 1024);

const rows: Row[] = [];

function statementFor(v: number): string {
  return `INSERT INTO ledger (id, account, amount, memo) VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')`;
}
const CREATE = "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)";

// ------------------------------------------------------------ ack latency

async function benchAckLatency(): Promise<void> {
  const dir = path.join(ROOT, "ack");
  const backend = await openBackend(path.join(dir, "backup"), { mode: "create" });
  const rawFile = path.join(dir, "raw.log");
  const fd = fs.openSync(rawFile, "w");
  let rawPos = 0;
  const ours: number[] = [];
  const raw: number[] = [];
  await applyChange(backend, { version: 1, transaction: [CREATE] });
  const rounds = 4000;
  for (let v = 2; v <= rounds + 1; v++) {
    const transaction = [statementFor(v)];
    const timestamp = Date.now();
    // The raw baseline writes exactly the bytes tidemark writes for this change.
    const bytes = encodeChangeRecord({ version: v, timestamp, transaction });
    // Alternate the order so neither side always runs on a warmer cache.
    const runOurs = async () => {
      const t0 = performance.now();
      await applyChange(backend, { version: v, timestamp, transaction });
      ours.push(performance.now() - t0);
    };
    const runRaw = () => {
      const t0 = performance.now();
      writeAll(fd, bytes, rawPos);
      fs.fdatasyncSync(fd);
      raw.push(performance.now() - t0);
      rawPos += bytes.length;
    };
    if (v % 2) {
      await runOurs();
      runRaw();
    } else {
      runRaw();
      await runOurs();
    }
  }
  fs.closeSync(fd);
  await backend.close();
  for (const p of [50, 99]) {
    const a = percentile(ours, p);
    const b = percentile(raw, p);
    rows.push({
      target: `ack latency p${p} (file)`,
      measured: ms(a),
      limit: `${ms(b)} raw append+fdatasync`,
      ratio: a / b,
      goal: p === 50 ? "≤ 1.3" : "report",
      ok: p === 50 ? a / b <= 1.3 : true,
    });
  }
}

// ------------------------------------------------------------ restore and compaction

async function benchRestoreAndCompaction(): Promise<void> {
  const dir = path.join(ROOT, "replay");
  const location = path.join(dir, "backup");
  const backend = await openBackend(location, { mode: "create" });
  const statements: string[] = [CREATE];
  await applyChange(backend, { version: 1, transaction: [CREATE] });
  for (let v = 2; v <= CHANGES; v++) {
    const st = statementFor(v);
    statements.push(st);
    await applyChange(backend, { version: v, transaction: [st] });
  }

  // The limit: better-sqlite3 running the same statements in one transaction, into a new file,
  // with the replay worker's pragmas and one final fsync; then a backup-API snapshot of it.
  const baselineFile = path.join(dir, "baseline.db");
  const limitTimes = await measured(() => replayLimit(baselineFile, statements));
  // As in bench/read-path.ts: a restore process holds no copy of the statements.
  statements.length = 0;
  const replayMs = limitTimes.wallMs;
  const replayCpu = limitTimes.cpuMs;
  const db = new Database(baselineFile);
  const snapshot = await measured(() => db.backup(path.join(dir, "baseline-snapshot.db")));
  db.close();

  const out = path.join(dir, "restored.db");
  const t2 = performance.now();
  await restore(backend, out, { inline: true });
  const restoreMs = performance.now() - t2;
  const rate = (n: number, t: number) => `${Math.round(n / (t / 1000)).toLocaleString("en-US")} stmt/s`;
  rows.push({
    target: `restore throughput (${CHANGES.toLocaleString("en-US")} changes)`,
    measured: rate(CHANGES, restoreMs),
    limit: `${rate(CHANGES, replayMs)} better-sqlite3, same pragmas + fsync`,
    ratio: replayMs / restoreMs,
    goal: "≥ 0.8",
    ok: replayMs / restoreMs >= 0.8,
  });

  // Compaction by a replay (no shadow: as `tidemark compact` runs it, in the worker past 20,000
  // changes), of a copy of the backup: the original's shadow compaction below leaves nothing for
  // a second one to fold.
  const copyLocation = path.join(dir, "backup-copy");
  // (Not its LOCK, which names this process as the writer of the original.)
  fs.cpSync(location, copyLocation, { recursive: true, filter: (src) => path.basename(src) !== "LOCK" });
  const copy = await openBackend(copyLocation, { mode: "write" });
  let replayStats: CompactionStats | undefined;
  const replayed = await measured(async () => (replayStats = await compact(copy)));
  await copy.close();
  pushCompaction(`compaction by replay (${CHANGES.toLocaleString("en-US")} changes)`, replayed, { wallMs: replayMs + snapshot.wallMs, cpuMs: replayCpu + snapshot.cpuMs }, "replay + backup() snapshot", replayStats!);

  // Compaction from the warm shadow that the applyChange calls kept (as the daemon compacts) vs
  // a backup-API copy of that same file and one fsync of the copy (a base is durable before it
  // is installed). The shadow is in WAL mode: a second connection reads what is committed.
  const shadow = shadowOf(backend);
  const shadowCopy = await measured(async () => {
    const s = new Database(shadow.file, { readonly: true });
    const copyFile = path.join(dir, "shadow-copy.db");
    try {
      await s.backup(copyFile);
    } finally {
      s.close();
    }
    const fd = fs.openSync(copyFile, "r+");
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  });
  let shadowStats: CompactionStats | undefined;
  const fromShadow = await measured(async () => (shadowStats = await compact(backend, { shadow })));
  if (shadowStats!.replayMs > 0) throw new Error("bench: the compaction from the shadow replayed instead");
  pushCompaction(`compaction from the shadow (${CHANGES.toLocaleString("en-US")} changes)`, fromShadow, shadowCopy, "backup() of the shadow file + fsync", shadowStats!);
  await backend.close();
}

function pushCompaction(target: string, ours: Times, limit: Times, what: string, stats: CompactionStats): void {
  if (stats.skipped) throw new Error(`bench: ${target} was skipped: ${stats.skipped}`);
  rows.push({
    target,
    measured: `${ms(ours.wallMs)}, CPU ${ms(ours.cpuMs)}`,
    limit: `${ms(limit.wallMs)}, CPU ${ms(limit.cpuMs)} ${what}`,
    ratio: ours.wallMs / limit.wallMs,
    goal: "≤ 1.3",
    ok: ours.wallMs / limit.wallMs <= 1.3,
  });
  process.stderr.write(`${target} detail: replay ${ms(stats.replayMs)}, snapshot ${ms(stats.snapshotMs)}, install ${ms(stats.installMs)}\n`);
}

// ------------------------------------------------------------ peak RSS

async function benchRestoreRss(): Promise<void> {
  if (SNAPSHOT_MB <= 0) return;
  const dir = path.join(ROOT, "rss");
  fs.mkdirSync(dir, { recursive: true });
  const source = path.join(dir, "big.db");
  bigDatabase(source, SNAPSHOT_MB);
  const size = fs.statSync(source).size;

  const location = path.join(dir, "backup");
  const backend = await openBackend(location, { mode: "create" });
  await applyChange(backend, { version: 1, snapshot: fs.createReadStream(source, { highWaterMark: 1 << 20 }) });
  await applyChange(backend, { version: 2, transaction: ["INSERT INTO blobs (data) VALUES (x'00')"] });
  await backend.close();
  fs.rmSync(source);

  const child = path.join(path.dirname(fileURLToPath(import.meta.url)), "restore-child.js");
  const t0 = performance.now();
  const out = execFileSync(process.execPath, [child, location, path.join(dir, "restored.db")], { encoding: "utf8" });
  const elapsed = performance.now() - t0;
  // Judged on what the restore allocates (see bench/restore-child.ts); the kernel's peak RSS,
  // which also counts the restored file's pages that integrity_check maps, is shown beside it.
  const { maxRssBytes, peakAnonBytes } = JSON.parse(out) as { maxRssBytes: number; peakAnonBytes: number };
  const mb = peakAnonBytes / 1024 / 1024;
  rows.push({
    target: `restore peak RSS, anonymous (${(size / 2 ** 30).toFixed(2)} GiB snapshot)`,
    measured: `${mb.toFixed(0)} MB (RSS with mapped file pages ${(maxRssBytes / 2 ** 20).toFixed(0)} MB)`,
    limit: "200 MB",
    ratio: mb / 200,
    goal: "< 1.0",
    ok: mb < 200,
  });
  process.stderr.write(`restore of the ${(size / 2 ** 30).toFixed(2)} GiB backup took ${ms(elapsed)}\n`);
}

try {
  process.stderr.write(`bench: ${os.cpus().length} cores, node ${process.version}, dir ${ROOT}\n`);
  const only = new Set((process.env.BENCH_ONLY ?? "core,daemon,s3,protection,cln,watch,read,cli,shadow,open").split(","));
  if (only.has("core")) {
    await benchAckLatency();
    await benchRestoreAndCompaction();
    await benchRestoreRss();
  }
  if (only.has("daemon")) await benchDaemon(path.join(ROOT, "daemon"), rows, CHANGES);
  if (only.has("s3")) await benchS3(path.join(ROOT, "s3"), rows, Number(process.env.BENCH_S3_CHANGES ?? 10_000));
  if (only.has("protection")) {
    await benchProtection(path.join(ROOT, "protection"), rows, Number(process.env.BENCH_PROTECTION_CHANGES ?? 50_000));
  }
  if (only.has("cln")) await benchCln(path.join(ROOT, "cln"), rows, Number(process.env.BENCH_CLN_WRITES ?? 2000));
  if (only.has("read")) await benchReadPath(path.join(ROOT, "read"), rows);
  if (only.has("watch")) await benchWatch(path.join(ROOT, "watch"), rows, Number(process.env.BENCH_WATCH_TX ?? 5000), Number(process.env.BENCH_WATCH_MB ?? 32));
  if (only.has("cli")) await benchCli(path.join(ROOT, "cli"), rows, Number(process.env.BENCH_CLI_RUNS ?? 20), Number(process.env.BENCH_INGEST_CHANGES ?? 20_000));
  if (only.has("shadow")) await benchShadow(path.join(ROOT, "shadow"), rows, Number(process.env.BENCH_SHADOW_ROUNDS ?? 4000));
  if (only.has("open")) await benchOpen(path.join(ROOT, "open"), rows, Number(process.env.BENCH_OPEN_CHANGES ?? CHANGES));
  printTable(rows);
} finally {
  fs.rmSync(ROOT, { recursive: true, force: true });
}
