/**
 * `tidemark restore <backend> <dest> [--version N | --time T] [--rules SET|FILE] [--force]
 * [--if-db-not-exists] [--if-replica-exists]`
 */
import fs from "node:fs";
import type { Command } from "commander";
import { createProgress } from "./progress.js";
import { interruptible } from "./interrupt.js";
import { TidemarkError, UsageError } from "../util/errors.js";
import { count } from "../util/plural.js";
import { addCodecOptions, codecOptions, parseTime, formatBytes, formatMs, formatRewrites, parseVersion, printJson, withBackend, type CodecFlags } from "./common.js";

interface RestoreCliOptions extends CodecFlags {
  version?: number;
  time?: number;
  rules?: string;
  force?: boolean;
  quiet?: boolean;
  json?: boolean;
  ifDbNotExists?: boolean;
  ifReplicaExists?: boolean;
}

/** Registers the command. */
export function registerRestore(program: Command): void {
  const cmd = program
    .command("restore")
    .summary("rebuild the database from a backup into a new file")
    .description(
      "Replay the base snapshot and every transaction into a new SQLite file, as of the head or of\n" +
        "--version N. It writes a temp file beside <dest>, runs PRAGMA integrity_check, fsyncs and\n" +
        "renames, so <dest> appears complete or not at all. Read-only on the backup.",
    )
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL")
    .argument("<dest>", "the SQLite file to create")
    .option("--version <n>", "restore as of version N instead of the head", parseVersion)
    .option("--time <iso-8601>", "restore as of a moment: the last change made by then (tidemark status lists the times held)", parseTime)
    .option("--rules <set|file>", 'rewrite rules: "core-lightning", "none", or a JSON file of [{name, pattern, replacement}]', "none")
    .option("--force", "replace <dest> if it exists (with its -wal, -shm and -journal files)")
    .option("--if-db-not-exists", "exit 0 and touch nothing when <dest> exists already (for a service's start)")
    .option("--if-replica-exists", "exit 0 when there is no backup at <backend> yet, or it holds nothing (a first start)")
    .option("-q, --quiet", "no progress bar and no summary")
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      "\nExamples:\n  tidemark restore ./backup restored.db\n  tidemark restore ./backup node.sqlite3 --rules core-lightning --version 1200\n  tidemark restore ./backup yesterday.db --time 2026-11-21T09:00:00Z\n" +
        "  tidemark restore --if-db-not-exists --if-replica-exists s3://bucket/app /data/app.db   # a container's entrypoint",
    );
  addCodecOptions(cmd, false);
  cmd
    .action(async (location: string, dest: string, opts: RestoreCliOptions) => {
      if (opts.version !== undefined && opts.time !== undefined) throw new UsageError("give --version or --time, not both");
      if (opts.force && opts.ifDbNotExists) throw new UsageError("give --force or --if-db-not-exists, not both");
      const [{ restore }, { loadRules }] = await Promise.all([import("../ops/restore.js"), import("../ops/rewrite.js")]);
      const rules = loadRules(opts.rules ?? "none");
      const skip = (why: string) => {
        if (opts.json) printJson({ restored: false, dest, reason: why });
        else if (!opts.quiet) process.stdout.write(`${why}; nothing restored\n`);
      };
      if (opts.ifDbNotExists && fs.existsSync(dest)) return skip(`${dest} exists`);
      await withBackend(location, "read", async (backend) => {
        if (opts.ifReplicaExists && backend.head().version === 0) return skip(`${backend.location} holds no changes yet`);
        const progress = createProgress("restore", "versions", opts.quiet || opts.json);
        const result = await interruptible(dest, progress, (signal) =>
          restore(backend, dest, {
            ...(opts.version !== undefined && { version: opts.version }),
            ...(opts.time !== undefined && { time: opts.time }),
            rules,
            force: opts.force ?? false,
            // A process of its own: a short restore, or a captured backup's, needs no worker thread.
            inline: true,
            onProgress: progress.update,
            onPhase: progress.phase,
            signal,
          }),
        );
        if (opts.json) return printJson(result);
        if (opts.quiet) return;
        process.stdout.write(
          `restored version ${result.version} to ${result.dest}: ${count(result.changes, "change")}, ${count(result.statements, "statement")}, ` +
            `${formatBytes(result.bytes)} in ${formatMs(result.durationMs)}\n`,
        );
        const rewrites = formatRewrites(result.rewrites);
        if (rewrites) process.stdout.write(`${rewrites}\n`);
      }, codecOptions(opts)).catch((err: unknown) => {
        if (opts.ifReplicaExists && err instanceof TidemarkError && err.code === "E_NO_BACKUP") return skip(`there is no backup at ${location} yet`);
        throw err;
      });
    });
}
