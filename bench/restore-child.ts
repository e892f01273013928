/**
 * Restores a backup and prints its own peak memory as JSON; bench/run.ts runs it as a child so
 * that the figure covers the restore alone.
 *
 * `maxRssBytes` is the kernel's peak RSS, which counts file pages mapped into the process: the
 * restored database's own pages, which integrity_check reads through a memory map, are in it
 * (pages already in the page cache, written there by the restore: mapping them allocates
 * nothing). `peakAnonBytes` is the peak of anonymous + shared memory (heap, buffers, SQLite's
 * cache), sampled from /proc/self/status every 20 ms: what the restore itself allocates.
 */
import fs from "node:fs";
import { openBackend } from "../src/backup/registry.js";
import { restore } from "../src/ops/restore.js";

const [location, dest] = process.argv.slice(2);
if (!location || !dest) throw new Error("usage: restore-child <backup> <dest>");

let peakAnonBytes = 0;
const sample = () => {
  const status = fs.readFileSync("/proc/self/status", "utf8");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
  peakAnonBytes = Math.max(peakAnonBytes, (kb("RssAnon") + kb("RssShmem")) * 1024);
};
const timer = setInterval(sample, 20);
const backend = await openBackend(location, { mode: "read" });
try {
  await restore(backend, dest);
} finally {
  await backend.close();
  clearInterval(timer);
  sample();
}
process.stdout.write(`${JSON.stringify({ maxRssBytes: process.resourceUsage().maxRSS * 1024, peakAnonBytes })}\n`);
