/**
 * `tidemark status <backend> [--json]`
 */
import type { Command } from "commander";
import { formatBytes, printJson, withBackend } from "./common.js";

/** Registers the command. */
export function registerStatus(program: Command): void {
  program
    .command("status")
    .summary("show a backup's head, base and size")
    .description(
      "Show the head version, the version a rewind returns to, the base snapshot, the versions a restore\n" +
        "can target, the record count and the bytes stored. Read-only: safe while a writer runs.",
    )
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL")
    .option("--json", "print JSON instead of text")
    .action(async (location: string, opts: { json?: boolean }) => {
      await withBackend(location, "read", async (backend) => {
        const s = await backend.status();
        if (opts.json) {
          printJson({ location: backend.location, ...s });
          return;
        }
        const lines = [
          ["backup", `${backend.location} (${backend.kind})`],
          ["head", s.version === 0 ? "0 (empty)" : String(s.version)],
          ["rewind to", s.prevVersion === null ? "not possible (the last operation was a rewind, or empty)" : String(s.prevVersion)],
          ["base", s.baseVersion === 0 ? "empty database (no snapshot)" : `snapshot at version ${s.baseVersion}`],
          ["restorable", s.version === 0 ? "nothing yet" : `versions ${s.firstVersion}..${s.version}`],
          ["records", String(s.records)],
          ["bytes", formatBytes(s.bytes)],
        ];
        if (s.tornTail) {
          lines.push(["torn tail", `${s.tornTail.bytes} bytes at offset ${s.tornTail.offset} of ${s.tornTail.location}, ignored (dropped by the next writer)`]);
        }
        for (const [k, v] of lines) process.stdout.write(`${k!.padEnd(11)}${v}\n`);
      });
    });
}
