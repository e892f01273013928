/**
 * `tidemark copy <src> <dst> [--force]`
 */
import type { Command } from "commander";
import { openOrCreateBackend } from "../backend-registry.js";
import { copyBackup } from "../copy.js";
import { terminalLogger } from "../logger.js";
import { createProgress } from "../progress.js";
import { addCodecOptions, codecOptions, formatMs, printJson, withBackend, type CodecFlags } from "./common.js";

/** Registers the command. */
export function registerCopy(program: Command): void {
  const cmd = program
    .command("copy")
    .summary("copy a whole backup to another backend")
    .description(
      "Copy a backup between any two backends (a directory, s3://…), verifying every checksum on the way.\n" +
        "The destination is created if missing; one that already holds changes is refused unless --force,\n" +
        "which empties it first. The source is only read: stop its writer first for an exact copy of the\n" +
        "head, or the copy fails and says so.",
    )
    .argument("<src>", "the backup to copy")
    .argument("<dst>", "where the copy goes")
    .option("--force", "replace what the destination holds")
    .option("-q, --quiet", "no progress bar and no summary")
    .option("--json", "print the result as JSON")
    .addHelpText("after", "\nExamples:\n  tidemark copy ./backup 's3://my-bucket/tidemark/app?region=eu-west-1'\n  tidemark copy 's3://my-bucket/tidemark/app' ./restored-backup");
  addCodecOptions(cmd, true);
  cmd
    .action(async (src: string, dst: string, opts: { force?: boolean; quiet?: boolean; json?: boolean } & CodecFlags) => {
      await withBackend(src, "read", async (from) => {
        const { backend: to } = await openOrCreateBackend(dst, { ...codecOptions(opts), log: terminalLogger() });
        try {
          const progress = createProgress("copy", "versions", opts.quiet || opts.json);
          let result;
          try {
            result = await copyBackup(from, to, { force: opts.force ?? false, onProgress: progress.update });
          } finally {
            progress.stop();
          }
          if (opts.json) return printJson(result);
          if (!opts.quiet) {
            process.stdout.write(
              `copied ${from.location} to ${to.location}: head ${result.version}, ${result.changes} changes, ${result.snapshots} snapshots, in ${formatMs(result.durationMs)}\n`,
            );
          }
        } finally {
          await to.close();
        }
      }, codecOptions(opts));
    });
}
