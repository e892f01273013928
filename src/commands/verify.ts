/**
 * `tidemark verify <backend>`
 */
import type { Command } from "commander";
import { TidemarkError } from "../errors.js";
import { createProgress } from "../progress.js";
import { verify } from "../verify.js";
import { addCodecOptions, codecOptions, formatBytes, printJson, withBackend, type CodecFlags } from "./common.js";

/** Registers the command. */
export function registerVerify(program: Command): void {
  const cmd = program
    .command("verify")
    .summary("check every record and snapshot")
    .description(
      "Read every record and snapshot of the backup: checksums, version contiguity, and that every\n" +
        "snapshot is a SQLite file. Read-only. Exits 1 with a precise report if anything is wrong; a torn\n" +
        "tail (a write cut short by a crash) is reported but is not a fault.",
    )
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL")
    .option("-q, --quiet", "no progress bar; print only problems")
    .option("--json", "print the report as JSON");
  addCodecOptions(cmd, false);
  cmd
    .action(async (location: string, opts: { quiet?: boolean; json?: boolean } & CodecFlags) => {
      await withBackend(location, "read", async (backend) => {
        const progress = createProgress("verify", "versions", opts.quiet || opts.json);
        let report;
        try {
          report = await verify(backend, { onProgress: progress.update });
        } finally {
          progress.stop();
        }
        if (opts.json) {
          printJson(report);
        } else {
          for (const p of report.problems) process.stdout.write(`FAULT ${p.code}: ${p.message}\n`);
          if (!opts.quiet || !report.ok) {
            const s = report.status;
            process.stdout.write(
              `${report.ok ? "ok" : "FAILED"}: ${report.records} records (versions ${s.firstVersion}..${s.version}), ` +
                `${report.snapshots} snapshots (${formatBytes(report.snapshotBytes)}) checked` +
                `${s.tornTail ? `; torn tail of ${s.tornTail.bytes} bytes at offset ${s.tornTail.offset} ignored` : ""}\n`,
            );
          }
        }
        if (!report.ok) {
          throw new TidemarkError("E_CORRUPT", `verify found ${report.problems.length} problem(s) in ${backend.location}`, {
            hint: "restore from a replica or an older copy; tidemark restore --version N can target a version before the damage",
          });
        }
      }, codecOptions(opts));
    });
}
