/**
 * Restores a backup and prints its own peak RSS as JSON; bench/run.ts runs it as a child so
 * that the figure covers the restore alone.
 */
import { openBackend } from "../src/backup/registry.js";
import { restore } from "../src/ops/restore.js";

const [location, dest] = process.argv.slice(2);
if (!location || !dest) throw new Error("usage: restore-child <backup> <dest>");
const backend = await openBackend(location, { mode: "read" });
try {
  await restore(backend, dest);
} finally {
  await backend.close();
}
process.stdout.write(`${JSON.stringify({ maxRssBytes: process.resourceUsage().maxRSS * 1024 })}\n`);
