/**
 * `tidemark copy <src> <dst> [--force]`
 */
import type { Command } from "commander";
import { terminalLogger } from "../util/logger.js";
import { TidemarkError } from "../util/errors.js";
import { createProgress } from "./progress.js";
import { interruptible } from "./interrupt.js";
import { count } from "../util/plural.js";
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
        "head, or the copy fails and says so. A copy that fails leaves the destination empty; one that is\n" +
        "killed leaves it marked incomplete, and every command refuses it until copy --force finishes it.\n\n" +
        "The copy keeps the source's compression and retention unless flags say otherwise. An encrypted\n" +
        "source is copied encrypted: pass the key to write with (--key) and any older ones (--decrypt-key).",
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
      const [{ openOrCreateBackend }, { copyBackup }, { refuseDamagedHead }] = await Promise.all([
        import("../backup/registry.js"),
        import("../ops/copy.js"),
        import("../ops/point-in-time.js"),
      ]);
      await withBackend(src, "read", async (from) => {
        const options = codecOptions(opts);
        const status = await from.status();
        // Refused before the destination is created.
        refuseDamagedHead(status, "the head a copy would end at");
        const settings = status.settings;
        if (settings?.encrypted && !options.keyring?.active) {
          throw new TidemarkError("E_KEY", `${from.location} is encrypted, and a copy is never written in the clear: it needs a key to write with`, {
            hint: "pass --key ID=file:PATH (the source's current key, or a new one with a new id) and --decrypt-key for older ones",
          });
        }
        const { backend: to } = await openOrCreateBackend(dst, {
          ...options,
          // --force may finish what an interrupted copy left.
          ...(opts.force && { allowIncomplete: true }),
          ...(options.compression === undefined && settings?.compression !== undefined && { compression: settings.compression }),
          ...(options.brotliQuality === undefined && settings?.brotliQuality !== undefined && { brotliQuality: settings.brotliQuality }),
          ...(settings?.retention !== undefined && { retention: settings.retention }),
          ...(settings?.capture && { capture: true }),
          log: terminalLogger(),
        });
        try {
          const progress = createProgress("copy", "versions", opts.quiet || opts.json);
          progress.phase("copying");
          const result = await interruptible(to.location, progress, (signal) =>
            copyBackup(from, to, { force: opts.force ?? false, onProgress: progress.update, signal }),
          );
          if (opts.json) return printJson(result);
          if (!opts.quiet) {
            process.stdout.write(
              `copied ${from.location} to ${to.location}: head ${result.version}, ${count(result.changes, "change")}, ${count(result.snapshots, "snapshot")}, in ${formatMs(result.durationMs)}\n`,
            );
          }
        } finally {
          await to.close();
        }
      }, codecOptions(opts));
    });
}
