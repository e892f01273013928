/**
 * `tidemark ingest <backend>`: changes as JSON lines on stdin, one durable ack line per change.
 */
import readline from "node:readline";
import type { Command } from "commander";
import type { SnapshotSource } from "../model/change.js";
import { InputError, withContext } from "../util/errors.js";
import { openRegularFile } from "../util/regular-file.js";
import { addCodecOptions, codecOptions, withBackend, type CodecFlags } from "./common.js";

const SQLITE_HEADER = "SQLite format 3\0";

/** Registers the command. */
export function registerIngest(program: Command): void {
  const cmd = program
    .command("ingest")
    .summary("append changes read as JSON lines from stdin")
    .description(
      "Read changes from stdin, one JSON object per line, and apply the version rules to each, as a host\n" +
        "would: check it against the backup's state (its statements must apply: E_REPLAY; a snapshot\n" +
        "must be a sound SQLite file: E_INPUT), make it durable, print its ack line, then read the next\n" +
        "line. At the first bad line it stops with an error and exits 1; everything acked before stays.\n" +
        "The backup's shadow database lives in TIDEMARK_SHADOW_DIR (default ~/.local/state/tidemark/shadows).\n\n" +
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
            const snapshot = wire.snapshotPath !== undefined ? await openSnapshot(wire.snapshotPath) : undefined;
            const result = await applyChange(backend, changeFromWire(wire, () => snapshot!), { allowNondeterministic: opts.allowNondeterministic === true });
            process.stdout.write(`${JSON.stringify(result)}\n`);
          } catch (err) {
            throw withContext(err, `line ${n}`);
          }
        }
      }, codecOptions(opts));
    });
}

/**
 * Opens a snapshot_path as the spool does: a regular file only (a FIFO, device, directory or
 * symbolic link is refused unread), and only the bytes it held when it was opened.
 */
async function openSnapshot(file: string): Promise<SnapshotSource> {
  const opened = await openRegularFile(file, "change.snapshot_path");
  if (!opened) throw new InputError(`change.snapshot_path: cannot open ${file}: ENOENT`);
  const head = Buffer.alloc(SQLITE_HEADER.length);
  const { bytesRead } = await opened.handle.read(head, 0, head.length, 0);
  if (bytesRead < head.length || head.toString("latin1") !== SQLITE_HEADER) {
    await opened.handle.close();
    throw new InputError(`change.snapshot_path: ${file} is not a SQLite database`);
  }
  return opened.handle.createReadStream({ start: 0, end: opened.size - 1, highWaterMark: 1 << 20 });
}
