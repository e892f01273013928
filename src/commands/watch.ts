/**
 * `tidemark watch <db> <backend>`: captures every transaction committed to a WAL-mode
 * database, by any program, into a captured backup (created when missing).
 */
import { InvalidArgumentError, type Command } from "commander";
import { TidemarkError } from "../util/errors.js";
import { count } from "../util/plural.js";
import { terminalLogger } from "../util/logger.js";
import { addCodecOptions, addRetentionOptions, codecOptions, retentionOptions, type CodecFlags, type RetentionFlags } from "./common.js";

interface WatchOptions extends CodecFlags, RetentionFlags {
  pollMs?: number;
  checkpointFrames?: number;
  verbose?: boolean;
}

/** Registers the command. */
export function registerWatch(program: Command): void {
  const cmd = program
    .command("watch")
    .summary("capture every transaction any program commits to a WAL-mode database")
    .description(
      "Run in the foreground beside the application and back up every transaction it commits, without\n" +
        "changing it: committed WAL frames are read (header, salts and checksums checked) and each\n" +
        "commit is stored as a change of the pages it wrote, within a poll interval of the commit. The\n" +
        "backup is created when missing, as a captured backup; a write-ahead backup is refused.\n" +
        "watch runs the WAL checkpoints itself (PASSIVE, under the write lock, once every frame is\n" +
        "stored), so the WAL stays bounded; the application waits at most for one checkpoint's copy.\n" +
        "After a restart it continues where the backup's head left off when the WAL still holds that\n" +
        "position; otherwise it takes a fresh snapshot and says so. A database in rollback-journal mode\n" +
        "is refused. SIGINT or SIGTERM stores what is committed and stops.",
    )
    .argument("<db>", "the application's SQLite database (WAL mode)")
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL")
    .option("--poll-ms <ms>", "how often the WAL is read (default 100)", parsePositive)
    .option("--checkpoint-frames <n>", "checkpoint once the WAL holds this many frames (default 1000)", parsePositive)
    .option("-v, --verbose", "log every capture, checkpoint and WAL restart on stderr")
    .addHelpText("after", "\nExamples:\n  tidemark watch ./app.db ./backup\n  tidemark restore ./backup ./restored.db");
  addCodecOptions(cmd, true);
  addRetentionOptions(cmd);
  cmd.action(async (db: string, location: string, opts: WatchOptions) => {
    const [{ openOrCreateBackend }, { Capture, checkCapturable }] = await Promise.all([import("../backup/registry.js"), import("../ops/capture.js")]);
    const log = terminalLogger(opts.verbose ?? false);
    // Before anything is created for it.
    checkCapturable(db);
    const { backend, created } = await openOrCreateBackend(location, { ...codecOptions(opts), ...retentionOptions(opts), capture: true, log });
    const controller = new AbortController();
    const stop = (): void => controller.abort();
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
    try {
      if (!created && (await backend.status()).settings?.capture !== true) {
        throw new TidemarkError("E_MODE", `${backend.location} is a write-ahead backup: tidemark watch writes captured backups only`, {
          hint: "give tidemark watch a new location, and it creates a captured backup there",
        });
      }
      const capture = new Capture(db, backend, {
        log,
        ...(opts.pollMs !== undefined && { pollMs: opts.pollMs }),
        ...(opts.checkpointFrames !== undefined && { checkpointFrames: opts.checkpointFrames }),
      });
      await capture.open();
      process.stderr.write(`watching ${db} into ${backend.location}${created ? " (created)" : ""}: head ${backend.head().version}; Ctrl-C stops\n`);
      await capture.run(controller.signal);
      const s = capture.status();
      process.stderr.write(`stopped: head ${s.head}, ${count(s.transactions, "transaction")} captured${s.snapshots ? `, ${count(s.snapshots, "fresh snapshot")}` : ""}\n`);
    } finally {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      await backend.close();
    }
  });
}

function parsePositive(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1) throw new InvalidArgumentError("expected a whole number >= 1.");
  return n;
}
