/**
 * `tidemark ingest <backend>`: changes as JSON lines on stdin, one durable ack line per change.
 */
import fs from "node:fs";
import readline from "node:readline";
import type { Command } from "commander";
import { InputError, withContext } from "../util/errors.js";
import { addCodecOptions, codecOptions, withBackend, type CodecFlags } from "./common.js";

const SQLITE_HEADER = "SQLite format 3\0";

/** Registers the command. */
export function registerIngest(program: Command): void {
  const cmd = program
    .command("ingest")
    .summary("append changes read as JSON lines from stdin")
    .description(
      "Read changes from stdin, one JSON object per line, and apply the version rules to each, as a host\n" +
        "would: make the change durable, print its ack line, then read the next line. At the first bad\n" +
        "line it stops with an error and exits 1; everything acked before stays.\n\n" +
        "Line format:\n" +
        '  {"version": N, "transaction": ["SQL", {"sql": "…", "params": [1, "a", null]}]}\n' +
        '  {"version": N, "snapshot_path": "/path/to/db.sqlite"}            a new base snapshot\n' +
        'Optional "timestamp": milliseconds since the epoch or ISO-8601. Blob and 64-bit integer\n' +
        'parameters are {"$blob": "<base64>"} and {"$bigint": "<decimal>"}.\n\n' +
        "Ack line (stdout):\n" +
        '  {"version": N, "action": "append" | "rewind-then-append" | "new-base" | "unchanged"}\n' +
        '  ("unchanged": the line repeats the head exactly; "timestampClampedTo": the timestamp was\n' +
        "  before the previous change's and was stored as that one.)\n\n" +
        "SQL that reads the clock or random numbers (random(), datetime('now'), CURRENT_TIMESTAMP…)\n" +
        "replays to a different database and is refused (E_NONDETERMINISTIC) unless\n" +
        "--allow-nondeterministic is given.",
    )
    .option("--allow-nondeterministic", "accept SQL that reads the clock or random numbers (it replays to different values)")
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL")
    .addHelpText("after", `\nExample:\n  echo '{"version":1,"transaction":["CREATE TABLE t(x)"]}' | tidemark ingest ./backup`);
  addCodecOptions(cmd, true);
  cmd
    .action(async (location: string, opts: CodecFlags & { allowNondeterministic?: boolean }) => {
      const [{ changeFromWire, parseWireChange }, { applyChange }] = await Promise.all([import("../model/change-json.js"), import("../ops/ingest.js")]);
      await withBackend(location, "write", async (backend) => {
        const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
        let n = 0;
        for await (const line of lines) {
          n++;
          if (line.trim() === "") continue;
          try {
            const wire = parseWireChange(line, { allowSnapshotPath: true });
            const result = await applyChange(backend, changeFromWire(wire, openSnapshot), { allowNondeterministic: opts.allowNondeterministic === true });
            process.stdout.write(`${JSON.stringify(result)}\n`);
          } catch (err) {
            throw withContext(err, `line ${n}`);
          }
        }
      }, codecOptions(opts));
    });
}

/** Opens a snapshot file after checking that it is a SQLite database. */
function openSnapshot(file: string): fs.ReadStream {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (err) {
    throw new InputError(`change.snapshot_path: cannot open ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const head = Buffer.alloc(SQLITE_HEADER.length);
  fs.readSync(fd, head, 0, head.length, 0);
  if (head.toString("latin1") !== SQLITE_HEADER) {
    fs.closeSync(fd);
    throw new InputError(`change.snapshot_path: ${file} is not a SQLite database`);
  }
  return fs.createReadStream(file, { fd, start: 0, highWaterMark: 1 << 20 });
}
