/**
 * The application side of bench/watch.ts, in its own process: better-sqlite3 committing one
 * small INSERT per transaction at a steady rate, knowing nothing of tidemark. It writes a JSON
 * file with each commit's wall-clock time (ms since the epoch) and duration (ms).
 *
 * usage: node watch-app.js DB COUNT RATE OUT
 */
import fs from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";

const [db, countArg, rateArg, out] = process.argv.slice(2) as [string, string, string, string];
const count = Number(countArg);
const rate = Number(rateArg);
const conn = new Database(db, { timeout: 10_000 });
conn.pragma("journal_mode = WAL");
const insert = conn.prepare("INSERT INTO t (at, b) VALUES (?, randomblob(100))");
const commitAt: number[] = [];
const latency: number[] = [];
const start = Date.now();
for (let i = 0; i < count; i++) {
  const due = start + (i * 1000) / rate;
  const wait = due - Date.now();
  if (wait > 1) await sleep(wait);
  const t0 = performance.now();
  insert.run(Date.now());
  latency.push(performance.now() - t0);
  commitAt.push(Date.now());
}
conn.close();
fs.writeFileSync(out, JSON.stringify({ commitAt, latency }));
