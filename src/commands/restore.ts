/**
 * `tidemark restore <backend> <dest> [--version N] [--rules SET|FILE] [--force]`
 */
import type { Command } from "commander";
import { createProgress } from "./progress.js";
import { restore } from "../ops/restore.js";
import { loadRules } from "../ops/rewrite.js";
import { UsageError } from "../util/errors.js";
import { addCodecOptions, codecOptions, parseTime, formatBytes, formatMs, formatRewrites, parseVersion, printJson, withBackend, type CodecFlags } from "./common.js";

interface RestoreCliOptions extends CodecFlags {
  version?: number;
  time?: number;
  rules?: string;
  force?: boolean;
  quiet?: boolean;
  json?: boolean;
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
    .option("-q, --quiet", "no progress bar and no summary")
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      "\nExamples:\n  tidemark restore ./backup restored.db\n  tidemark restore ./backup node.sqlite3 --rules core-lightning --version 1200\n  tidemark restore ./backup yesterday.db --time 2026-11-21T09:00:00Z",
    );
  addCodecOptions(cmd, false);
  cmd
    .action(async (location: string, dest: string, opts: RestoreCliOptions) => {
      if (opts.version !== undefined && opts.time !== undefined) throw new UsageError("give --version or --time, not both");
      const rules = loadRules(opts.rules ?? "none");
      await withBackend(location, "read", async (backend) => {
        const progress = createProgress("restore", "versions", opts.quiet || opts.json);
        let result;
        try {
          result = await restore(backend, dest, {
            ...(opts.version !== undefined && { version: opts.version }),
            ...(opts.time !== undefined && { time: opts.time }),
            rules,
            force: opts.force ?? false,
            onProgress: progress.update,
          });
        } finally {
          progress.stop();
        }
        if (opts.json) return printJson(result);
        if (opts.quiet) return;
        process.stdout.write(
          `restored version ${result.version} to ${result.dest}: ${result.changes} changes, ${result.statements} statements, ` +
            `${formatBytes(result.bytes)} in ${formatMs(result.durationMs)}\n`,
        );
        const rewrites = formatRewrites(result.rewrites);
        if (rewrites) process.stdout.write(`${rewrites}\n`);
      }, codecOptions(opts));
    });
}
