/**
 * `tidemark compact <backend>`
 */
import type { Command } from "commander";
import { createProgress } from "./progress.js";
import { interruptible } from "./interrupt.js";
import { addCodecOptions, addRetentionOptions, codecOptions, formatBytes, formatMs, formatRewrites, printJson, retentionOptions, viaDaemonWhenLocked, withBackend, type CodecFlags, type RetentionFlags } from "./common.js";

/** Registers the command. */
export function registerCompact(program: Command): void {
  const cmd = program
    .command("compact")
    .summary("fold the log into a fresh base snapshot")
    .description(
      "Replay the backup up to the change before the head, snapshot it with SQLite's backup API, and\n" +
        "install it as the new base. The last change stays separate, so one rewind remains possible.\n" +
        "A crash at any point leaves a backup that restores to the same head. Takes the writer lock.\n" +
        "A daemon that serves the backup compacts it from its shadow instead (POST /v1/dbs/<db>/compact):\n" +
        "a shadow left by a closed process holds the head, not the state before it that the base needs.",
    )
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL")
    .option("--rules <set|file>", 'rewrite rules for the replay: "core-lightning", "none", or a JSON file', "none")
    .option("--tmp-dir <dir>", "where the temp database files go (default: the OS temp directory)")
    .option("-q, --quiet", "no progress bar and no summary")
    .option("--json", "print the statistics as JSON");
  addCodecOptions(cmd, true);
  addRetentionOptions(cmd);
  cmd
    .action(async (location: string, opts: { rules?: string; tmpDir?: string; quiet?: boolean; json?: boolean } & CodecFlags & RetentionFlags) => {
      const [{ compact }, { loadRules }] = await Promise.all([import("../ops/compaction.js"), import("../ops/rewrite.js")]);
      const rules = loadRules(opts.rules ?? "none");
      await viaDaemonWhenLocked("compact", () => withBackend(location, "write", async (backend) => {
        const progress = createProgress("compact", "versions", opts.quiet || opts.json);
        progress.phase("replaying");
        const stats = await interruptible(backend.location, progress, (signal) =>
          // A process of its own: a short replay, or a captured backup's, needs no worker thread.
          compact(backend, { rules, ...(opts.tmpDir && { tmpDir: opts.tmpDir }), inline: true, onProgress: progress.update, signal }),
        );
        if (opts.json) return printJson(stats);
        if (opts.quiet) return;
        if (stats.skipped) {
          process.stdout.write(`nothing to compact: ${stats.skipped}\n`);
          return;
        }
        process.stdout.write(
          `compacted to a base at version ${stats.baseVersion} in ${formatMs(stats.durationMs)} ` +
            `(replay ${formatMs(stats.replayMs)}, snapshot ${formatMs(stats.snapshotMs)}, install ${formatMs(stats.installMs)})\n` +
            `records ${stats.before.records} -> ${stats.after.records}, bytes ${formatBytes(stats.before.bytes)} -> ${formatBytes(stats.after.bytes)}\n`,
        );
        const rewrites = formatRewrites(stats.rewrites);
        if (rewrites) process.stdout.write(`${rewrites}\n`);
      }, { ...codecOptions(opts), ...retentionOptions(opts) }));
    });
}
