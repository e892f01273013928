/**
 * The read path, each against an honest limit measured in the same run (BENCH_ONLY=read):
 *
 *   restore N changes   open + restore() of N single-statement changes vs better-sqlite3 running
 *                       the same statements in one transaction with the replay worker's pragmas,
 *                       closing and fsyncing the file once; wall and CPU (both in this process,
 *                       so process.cpuUsage covers the worker thread too)
 *   snapshot restore    `tidemark restore` of a backup whose base is a BENCH_READ_MB database, in a
 *                       child, vs `cp` + `sync` of that database file; CPU and wall; peak RSS
 *   init --from-db      `tidemark init --from-db` of that database, in a child, vs a child that
 *                       copies it with better-sqlite3's backup() and fsyncs the copy
 *
 * Environment: BENCH_READ_CHANGES (comma-separated counts, default "10000,100000"),
 * BENCH_READ_MB (default 1024; 0 skips the snapshot rows), BENCH_SNAPSHOT_RUNS (runs of each
 * snapshot-row command, interleaved with its limit's; medians; default 3), BENCH_READ_FIXTURES (a
 * directory where the N-change backups are built once and kept for later runs; they are written
 * 1000 records per append, about a minute for 1M changes).
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { openBackend } from "../src/backup/registry.js";
import { applyChange } from "../src/ops/ingest.js";
import { restore } from "../src/ops/restore.js";
import { ms, type Row } from "./table.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.join(HERE, "..", "src", "cli.js");

/** The replay worker's pragmas (src/ops/replay-worker.js), so that the limit does the same work. */
export const REPLAY_PRAGMAS = ["journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE", "cache_size = -32768"];

/** Wall and CPU time of some work, in ms. */
export interface Times {
  readonly wallMs: number;
  readonly cpuMs: number;
}

/** Runs `fn` and returns its wall time and this process's CPU time (all threads). */
export async function measured(fn: () => Promise<unknown> | unknown): Promise<Times> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const wallMs = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { wallMs, cpuMs: (c.user + c.system) / 1000 };
}

/**
 * The limit of a restore: the same statements in one transaction into a new file, with the
 * replay worker's pragmas, then one fsync of the file.
 */
export function replayLimit(file: string, statements: readonly string[]): void {
  const db = new Database(file);
  for (const p of REPLAY_PRAGMAS) db.pragma(p);
  db.exec("BEGIN");
  for (const st of statements) db.exec(st);
  db.exec("COMMIT");
  db.close();
  const fd = fs.openSync(file, "r+");
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

/** The median wall and the median CPU time of some runs. */
function median(runs: readonly Times[]): Times {
  const mid = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
  return { wallMs: mid(runs.map((t) => t.wallMs)), cpuMs: mid(runs.map((t) => t.cpuMs)) };
}

/** Runs a shell command and returns its wall and CPU time (its children's included). */
function childTimes(script: string): Times {
  const out = execFileSync("bash", ["-c", `TIMEFORMAT='%3R %3U %3S'; { time ( ${script} ) >/dev/null ; } 2>&1`], { encoding: "utf8" })
    .trim()
    .split("\n")
    .at(-1)!;
  const [r, u, s] = out.split(" ").map(Number);
  return { wallMs: r! * 1000, cpuMs: (u! + s!) * 1000 };
}

const statementFor = (v: number) => `INSERT INTO ledger (id, account, amount, memo) VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')`;
const CREATE = "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)";
const count = (n: number) => n.toLocaleString("en-US");
const rate = (n: number, t: number) => `${count(Math.round(n / (t / 1000)))} stmt/s`;

async function benchRestoreChanges(dir: string, rows: Row[], changes: number): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  const fixtures = process.env.BENCH_READ_FIXTURES;
  const location = fixtures ? path.join(fixtures, `changes-${changes}`) : path.join(dir, "backup");
  const statements: string[] = [CREATE];
  for (let v = 2; v <= changes; v++) statements.push(statementFor(v));
  if (!fixtures || !fs.existsSync(`${location}.complete`)) {
    fs.rmSync(location, { recursive: true, force: true });
    const writer = await openBackend(location, { mode: "create" });
    await applyChange(writer, { version: 1, transaction: [statements[0]!] });
    // The rest in appends of 1000 records (one fsync each): the same log bytes as one ack per
    // change, built in a minute instead of an hour for 1M changes.
    for (let v = 2; v <= changes; v += 1000) {
      const batch = [];
      for (let w = v; w < v + 1000 && w <= changes; w++) batch.push({ version: w, timestamp: Date.now(), transaction: [statements[w - 1]!] });
      await writer.addChanges(batch);
    }
    await writer.close();
    if (fixtures) fs.writeFileSync(`${location}.complete`, "");
  }

  const limit = await measured(() => replayLimit(path.join(dir, "limit.db"), statements));
  // The limit's input is not the restore's: a real restore process holds no million strings for
  // each major GC to mark.
  statements.length = 0;
  // better-sqlite3 was loaded before the limit ran; the modules a restore loads on first use are
  // loaded before it is measured, likewise. A `tidemark restore` process loads them at start.
  await import("../backends/file.js");
  await import("../src/ops/replay-sqlite.js");
  let openMs = 0;
  const ours = await measured(async () => {
    const t0 = performance.now();
    const backend = await openBackend(location, { mode: "read" });
    openMs = performance.now() - t0;
    try {
      // As `tidemark restore` runs it.
      await restore(backend, path.join(dir, "restored.db"), { inline: true });
    } finally {
      await backend.close();
    }
  });
  const ratio = limit.wallMs / ours.wallMs;
  const goal = changes <= 10_000 ? 0.6 : 0.8;
  rows.push({
    target: `restore ${count(changes)} changes (open + restore)`,
    measured: `${rate(changes, ours.wallMs)}, CPU ${ms(ours.cpuMs)}`,
    limit: `${rate(changes, limit.wallMs)}, CPU ${ms(limit.cpuMs)} same pragmas + fsync`,
    ratio,
    goal: `≥ ${goal}`,
    ok: ratio >= goal,
  });
  process.stderr.write(
    `read-path: restore ${count(changes)}: wall ${ms(ours.wallMs)} (open ${ms(openMs)}), CPU ${ms(ours.cpuMs)} = ${(ours.cpuMs / limit.cpuMs).toFixed(2)}× the limit's\n`,
  );
}

/** A database of random blobs of about `mb` MiB. */
export function bigDatabase(file: string, mb: number): void {
  const db = new Database(file);
  db.pragma("journal_mode = OFF");
  db.exec("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)");
  const insert = db.prepare("INSERT INTO blobs (data) VALUES (?)");
  const chunk = 256 * 1024;
  db.exec("BEGIN");
  for (let i = 0; i < (mb * 1024 * 1024) / chunk; i++) insert.run(randomBytes(chunk));
  db.exec("COMMIT");
  db.close();
}

async function benchSnapshotPath(dir: string, rows: Row[], mb: number): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  const source = path.join(dir, "big.db");
  bigDatabase(source, mb);
  const size = fs.statSync(source).size;
  const gib = `${(size / 2 ** 30).toFixed(2)} GiB`;

  // init --from-db vs backup() + fsync, both children started the same way; interleaved runs,
  // medians (a single run of either swings by a third here with the kernel's writeback).
  const runs = Math.max(1, Number(process.env.BENCH_SNAPSHOT_RUNS ?? 3));
  const backupChild = path.join(HERE, "sqlite-backup-child.js");
  const limitInits: Times[] = [];
  const inits: Times[] = [];
  let location = "";
  for (let i = 0; i < runs; i++) {
    limitInits.push(childTimes(`${process.execPath} ${backupChild} ${source} ${path.join(dir, "backup-copy.db")}`));
    fs.rmSync(path.join(dir, "backup-copy.db"));
    if (location) fs.rmSync(location, { recursive: true });
    // A new location each run: an init over an old one would also remove that one's shadow.
    location = path.join(dir, `backup-${i}`);
    inits.push(childTimes(`${process.execPath} ${CLI} init ${location} --from-db ${source} --version 1`));
  }
  const limitInit = median(limitInits);
  const init = median(inits);
  rows.push({
    target: `init --from-db, CPU (${gib})`,
    measured: `${ms(init.cpuMs)} (wall ${ms(init.wallMs)})`,
    limit: `${ms(limitInit.cpuMs)} (wall ${ms(limitInit.wallMs)}) backup() + fsync`,
    ratio: init.cpuMs / limitInit.cpuMs,
    goal: "≤ 1.3",
    ok: init.cpuMs / limitInit.cpuMs <= 1.3,
  });

  // Snapshot restore vs cp + sync of the same database, interleaved runs, medians.
  const copy = path.join(dir, "copy.db");
  const child = path.join(HERE, "restore-child.js");
  const dest = path.join(dir, "restored.db");
  const cps: Times[] = [];
  const restores: Times[] = [];
  for (let i = 0; i < runs; i++) {
    cps.push(childTimes(`cp ${source} ${copy} && sync ${copy}`));
    fs.rmSync(copy);
    if (i > 0) fs.rmSync(dest);
    restores.push(childTimes(`${process.execPath} ${child} ${location} ${dest} > ${path.join(dir, "child.json")}`));
  }
  fs.rmSync(source);
  const cp = median(cps);
  const ours = median(restores);
  const { maxRssBytes, peakAnonBytes } = JSON.parse(fs.readFileSync(path.join(dir, "child.json"), "utf8")) as { maxRssBytes: number; peakAnonBytes: number };
  rows.push({
    target: `restore of a ${gib} base, CPU`,
    measured: `${ms(ours.cpuMs)} (wall ${ms(ours.wallMs)})`,
    limit: `${ms(cp.cpuMs)} (wall ${ms(cp.wallMs)}) cp + sync`,
    ratio: ours.cpuMs / cp.cpuMs,
    goal: "≤ 2.0",
    ok: ours.cpuMs / cp.cpuMs <= 2,
  });
  // Judged on what the restore allocates; the kernel's peak RSS also counts the restored file's
  // page-cache pages that integrity_check maps (see bench/restore-child.ts), shown beside it.
  const anon = peakAnonBytes / 2 ** 20;
  rows.push({
    target: `restore peak RSS, anonymous (${gib} base)`,
    measured: `${anon.toFixed(0)} MB (RSS with mapped file pages ${(maxRssBytes / 2 ** 20).toFixed(0)} MB)`,
    limit: "200 MB",
    ratio: anon / 200,
    goal: "< 1.0",
    ok: anon < 200,
  });
  const check = new Database(dest, { readonly: true });
  const integrity = await measured(() => check.pragma("integrity_check"));
  // As restore runs it: through a memory map (src/ops/replay-worker.js).
  check.pragma(`mmap_size = ${2 ** 40}`);
  const mapped = await measured(() => check.pragma("integrity_check"));
  check.close();
  process.stderr.write(
    `read-path: PRAGMA integrity_check of the restored file takes ${ms(integrity.cpuMs)} CPU reading it page by page, ${ms(mapped.cpuMs)} through a memory map (as restore runs it)\n`,
  );
}

/** Runs the read-path benchmarks; appends rows. */
export async function benchReadPath(dir: string, rows: Row[]): Promise<void> {
  const counts = (process.env.BENCH_READ_CHANGES ?? "10000,100000").split(",").map(Number).filter((n) => n > 1);
  for (const n of counts) await benchRestoreChanges(path.join(dir, `restore-${n}`), rows, n);
  const mb = Number(process.env.BENCH_READ_MB ?? 1024);
  if (mb > 0) await benchSnapshotPath(path.join(dir, "snapshot"), rows, mb);
}
