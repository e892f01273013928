/**
 * Capture (`tidemark watch`) against its limits, in the same run:
 *
 *   capture lag        an application process commits N one-row transactions at 1,000/s; the
 *                      capture runs in this process (file backend, poll 100 ms). A
 *                      transaction's lag is the moment the capture had stored it minus the
 *                      moment its commit returned (both wall clocks of this machine). Limit: 1 s.
 *   commit latency     the application's INSERT + COMMIT (better-sqlite3's defaults: WAL,
 *                      synchronous NORMAL), p50 and p99, with the capture running (same
 *                      machine, same cores) vs the same run with nothing watching
 *   restore CPU        restore() of the captured backup (a BENCH_WATCH_MB base, 32 by default,
 *                      then the pages; integrity_check included) vs `cp` of the database and a
 *                      `sync` of the copy, CPU time (user + sys, children included)
 *   bytes per tx       the captured changes' bytes in the log vs the WAL frames (24-byte header
 *                      + page) those transactions took, no compression: at 1,000 tx/s (the
 *                      capture stores what each poll finds as one change, so pages rewritten
 *                      by several transactions are stored once), and at 20 tx/s (one
 *                      transaction per change, the worst case)
 */
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { openBackend } from "../src/backup/registry.js";
import { Capture } from "../src/ops/capture.js";
import { restore } from "../src/ops/restore.js";
import { ms, percentile, type Row } from "./table.js";

const RATE = 1000;
const APP = path.join(path.dirname(fileURLToPath(import.meta.url)), "watch-app.js");

interface AppRun {
  readonly commitAt: number[];
  readonly latency: number[];
}

async function runApp(db: string, count: number, out: string): Promise<AppRun> {
  const child = spawn(process.execPath, [APP, db, String(count), String(RATE), out], { stdio: ["ignore", "inherit", "inherit"] });
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  if (code !== 0) throw new Error(`bench app exited with ${code}`);
  return JSON.parse(fs.readFileSync(out, "utf8")) as AppRun;
}

function freshDb(file: string, mb = 0): void {
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, at INTEGER, b BLOB)");
  db.exec("CREATE TABLE filler (b BLOB)");
  const fill = db.prepare("INSERT INTO filler VALUES (randomblob(4000))");
  db.transaction(() => {
    for (let i = 0; i < mb * 256; i++) fill.run();
  })();
  db.close();
}

/** User + system CPU ms of a shell command and its children. */
function childCpuMs(script: string): number {
  const out = execFileSync("bash", ["-c", `TIMEFORMAT='%3U %3S'; { time ( ${script} ) ; } 2>&1`], { encoding: "utf8" }).trim().split("\n").at(-1)!;
  const [u, s] = out.split(" ").map(Number);
  return (u! + s!) * 1000;
}

/** Runs the capture benchmarks; appends rows. */
export async function benchWatch(dir: string, rows: Row[], count: number, mb: number): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  // Without watch: the application alone.
  const bare = path.join(dir, "bare.db");
  freshDb(bare);
  const alone = await runApp(bare, count, path.join(dir, "bare.json"));

  const db = path.join(dir, "app.db");
  freshDb(db, mb);
  const backend = await openBackend(path.join(dir, "backup"), { mode: "create", capture: true });
  let stored: { at: number; transactions: number }[] = [];
  const capture: Capture = new Capture(db, backend, { onStored: () => stored.push({ at: Date.now(), transactions: capture.status().transactions }) });
  await capture.open();
  stored = [];
  const controller = new AbortController();
  const running = capture.run(controller.signal);
  const watched = await runApp(db, count, path.join(dir, "watched.json"));
  const until = Date.now() + 10_000;
  while (capture.status().transactions < count && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  const s = capture.status();
  const st = await backend.status();
  // Slowly: one transaction per change.
  const slow = 60;
  const slowApp = spawn(process.execPath, [APP, db, String(slow), "20", path.join(dir, "slow.json")], { stdio: ["ignore", "inherit", "inherit"] });
  await new Promise((resolve) => slowApp.on("close", resolve));
  while (capture.status().transactions < count + slow && Date.now() < until + 10_000) await new Promise((r) => setTimeout(r, 20));
  const s2 = capture.status();
  const st2 = await backend.status();
  controller.abort();
  await running;

  // Transaction k (from 1) was stored by the first change whose running count reached k.
  const lags: number[] = [];
  let j = 0;
  for (let k = 1; k <= count; k++) {
    while (j < stored.length && stored[j]!.transactions < k) j++;
    if (j === stored.length) break;
    lags.push(stored[j]!.at - watched.commitAt[k - 1]!);
  }
  const lagP99 = lags.length === count ? percentile(lags, 99) : Infinity;
  rows.push({ target: `capture lag p99 at ${RATE} tx/s (${count} tx, poll 100 ms)`, measured: ms(lagP99), limit: "1 s", ratio: lagP99 / 1000, goal: "< 1.0", ok: lagP99 < 1000 });
  for (const p of [50, 99]) {
    const w = percentile(watched.latency, p);
    const a = percentile(alone.latency, p);
    rows.push({ target: `app commit latency p${p} with watch vs without`, measured: ms(w), limit: ms(a), ratio: w / a, goal: "≤ 1.1", ok: w / a <= 1.1 });
  }

  // The log after the base record: the captured changes.
  const base = st.bytes - st.snapshotBytes;
  const perTx = (what: string, tx: number, changes: number, logBytes: number, walBytes: number): Row => ({
    target: `bytes per captured tx vs its WAL frames, ${what} (${tx} tx in ${changes} changes)`,
    measured: `${(logBytes / tx).toFixed(0)} B`,
    limit: `${(walBytes / tx).toFixed(0)} B`,
    ratio: logBytes / walBytes,
    goal: "≤ 1.05",
    ok: logBytes / walBytes <= 1.05,
  });
  rows.push(perTx(`${RATE} tx/s`, s.transactions, st.version - 1, base, s.walFrameBytes));
  rows.push(perTx("20 tx/s", s2.transactions - s.transactions, st2.version - st.version, st2.bytes - st2.snapshotBytes - base, s2.walFrameBytes - s.walFrameBytes));

  const dest = path.join(dir, "restored.db");
  const c0 = process.cpuUsage();
  // As `tidemark restore` runs it.
  await restore(backend, dest, { inline: true });
  const c1 = process.cpuUsage(c0);
  await backend.close();
  const restoreCpu = (c1.user + c1.system) / 1000;
  const cpCpu = childCpuMs(`cp ${db} ${path.join(dir, "copy.db")} && sync ${path.join(dir, "copy.db")}`);
  const check = new Database(dest, { readonly: true });
  const i0 = process.cpuUsage();
  check.pragma("integrity_check");
  const i1 = process.cpuUsage(i0);
  check.close();
  process.stderr.write(`watch: of the restore's ${ms(restoreCpu)} CPU, PRAGMA integrity_check alone takes ${ms((i1.user + i1.system) / 1000)}\n`);
  rows.push({
    target: `restore CPU of the captured backup (${(fs.statSync(dest).size / 2 ** 20).toFixed(1)} MiB) vs cp + sync`,
    measured: ms(restoreCpu),
    limit: ms(cpCpu),
    ratio: restoreCpu / Math.max(cpCpu, 1),
    goal: "≤ 2.0",
    ok: restoreCpu / Math.max(cpCpu, 1) <= 2,
  });
}
