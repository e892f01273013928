/**
 * `tidemark verify <backend>`
 */
import type { Command } from "commander";
import { TidemarkError } from "../util/errors.js";
import { createProgress } from "./progress.js";
import { interruptible } from "./interrupt.js";
import { count, versionRange } from "../util/plural.js";
import { addCodecOptions, codecOptions, formatBytes, formatMs, printJson, withBackend, type CodecFlags } from "./common.js";

/** Registers the command. */
export function registerVerify(program: Command): void {
  const cmd = program
    .command("verify")
    .summary("check every record and snapshot")
    .description(
      "Read every record and snapshot of the backup, in every generation it holds: checksums, version\n" +
        "contiguity, decryption, and that every snapshot is a SQLite file. With --restore, also rebuild\n" +
        "the head into a temp file and check it with PRAGMA integrity_check. Read-only. Exits 1 with a\n" +
        "precise report if anything is wrong; a torn tail (a write cut short by a crash) is reported\n" +
        "but is not a fault.",
    )
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL")
    .option("--restore", "also restore the head into a temp file, run PRAGMA integrity_check and compare the version")
    .option("--rules <set|file>", 'rewrite rules for that restore: "core-lightning", "none", or a JSON file', "none")
    .option("--tmp-dir <dir>", "where the temp database goes (default: the OS temp directory)")
    .option("-q, --quiet", "no progress bar; print only problems")
    .option("--json", "print the report as JSON");
  addCodecOptions(cmd, false);
  cmd
    .action(async (location: string, opts: { quiet?: boolean; json?: boolean; restore?: boolean; rules?: string; tmpDir?: string } & CodecFlags) => {
      const [{ verify }, { loadRules }] = await Promise.all([import("../ops/verify.js"), import("../ops/rewrite.js")]);
      await withBackend(location, "read", async (backend) => {
        const progress = createProgress("verify", "versions", opts.quiet || opts.json);
        progress.phase("checking records");
        const report = await interruptible(backend.location, progress, (signal) =>
          verify(backend, {
            onProgress: progress.update,
            restore: opts.restore ?? false,
            rules: loadRules(opts.rules ?? "none"),
            ...(opts.tmpDir && { tmpDir: opts.tmpDir }),
            signal,
          }),
        );
        if (opts.json) {
          printJson(report);
        } else {
          for (const p of report.problems) process.stdout.write(`FAULT ${p.code}: ${p.message}\n`);
          if (!opts.quiet || !report.ok) {
            const s = report.status;
            process.stdout.write(
              `${report.ok ? "ok" : "FAILED"}: ${count(report.records, "record")} (${versionRange(s.firstVersion, s.version)}), ` +
                `${count(report.snapshots, "snapshot")} (${formatBytes(report.snapshotBytes)}) checked` +
                `${report.restored ? `; restored version ${report.restored.version}, integrity_check ok, in ${formatMs(report.restored.durationMs)}` : ""}` +
                `${s.tornTail ? `; torn tail of ${s.tornTail.bytes} bytes at offset ${s.tornTail.offset} ignored` : ""}\n`,
            );
          }
        }
        if (!report.ok) {
          // Only keys missing or wrong: nothing is known to be damaged; the hint says so.
          const keysOnly = report.problems.every((p) => p.code === "E_KEY");
          throw new TidemarkError(keysOnly ? "E_KEY" : "E_CORRUPT", `verify found ${report.problems.length} problem(s) in ${backend.location}`, {
            hint: keysOnly
              ? "give every key the backup was written with: --key ID=SOURCE for the current one, --decrypt-key ID=SOURCE for older ones"
              : "restore from a replica or an older copy; tidemark restore --version N can target a version before the damage",
          });
        }
      }, codecOptions(opts));
    });
}
