/**
 * `tidemark init <backend> [--from-db PATH --version N]`
 */
import type { Command } from "commander";
import { UsageError } from "../util/errors.js";
import { terminalLogger } from "../util/logger.js";
import type { SqliteStream } from "../ops/sqlite-snapshot.js";
import type { Backend } from "../backup/backup.js";
import { addCodecOptions, addRetentionOptions, codecOptions, formatBytes, parseVersion, retentionOptions, type CodecFlags, type RetentionFlags } from "./common.js";

interface InitOptions extends CodecFlags, RetentionFlags {
  fromDb?: string;
  version?: number;
}

/** Registers the command. */
export function registerInit(program: Command): void {
  const cmd = program
    .command("init")
    .summary("create a new backup")
    .description(
      "Create a new, empty backup at <backend>. With --from-db, seed it with a consistent snapshot of a\n" +
        "live SQLite database as version N: read once, straight into the backup, under a read transaction\n" +
        "(a WAL-mode host writes on meanwhile; a rollback-journal host's writes wait until it is read).",
    )
    .argument("<backend>", "where the backup goes: a directory path, file:PATH, or a backend URL")
    .option("--from-db <path>", "seed the backup with a snapshot of this SQLite database")
    .option("--version <n>", "the host's data version of that snapshot (required with --from-db)", parseVersion)
    .addHelpText("after", "\nExamples:\n  tidemark init ./backup\n  tidemark init ./backup --from-db app.db --version 42");
  addCodecOptions(cmd, true);
  addRetentionOptions(cmd);
  cmd
    .action(async (location: string, opts: InitOptions) => {
      if (opts.fromDb !== undefined && opts.version === undefined) {
        throw new UsageError("--from-db needs --version N: the host's data version of that database", {
          hint: "tidemark init ./backup --from-db app.db --version 42",
        });
      }
      if (opts.version !== undefined && opts.fromDb === undefined) {
        throw new UsageError("--version only applies with --from-db", { hint: "tidemark init ./backup --from-db app.db --version 42" });
      }
      const [{ openBackend }, { streamSqlite }] = await Promise.all([import("../backup/registry.js"), import("../ops/sqlite-snapshot.js")]);
      // Opened (and checked to be a database) before anything is created.
      let snapshot = opts.fromDb ? streamSqlite(opts.fromDb, `--from-db ${opts.fromDb}`) : undefined;
      try {
        const backend = await openBackend(location, { ...codecOptions(opts), ...retentionOptions(opts), mode: "create", log: terminalLogger() });
        try {
          if (snapshot && opts.fromDb !== undefined && opts.version !== undefined) {
            const bytes = await seed(backend, opts.version, snapshot, () => (snapshot = streamSqlite(opts.fromDb!, `--from-db ${opts.fromDb}`)));
            process.stdout.write(`created backup at ${backend.location}, seeded at version ${opts.version} (${formatBytes(bytes)} snapshot)\n`);
          } else {
            process.stdout.write(`created empty backup at ${backend.location}; the first change must be version 1 or carry a snapshot\n`);
          }
        } finally {
          await backend.close();
        }
      } finally {
        snapshot?.close();
      }
    });
}

/** Tries to take a snapshot this many times while the host's WAL keeps restarting under it. */
const SEED_ATTEMPTS = 3;

/**
 * Stores the database's image as version `version`, streamed straight into the blob. When its
 * WAL restarted while it was read (the blob is then discarded, nothing stored), takes it again.
 * Resolves to the image's size.
 */
async function seed(backend: Backend, version: number, first: SqliteStream, again: () => SqliteStream): Promise<number> {
  const [{ applyChange }, { WalChangedError }] = await Promise.all([import("../ops/ingest.js"), import("../ops/wal-snapshot.js")]);
  let snapshot = first;
  for (let attempt = 1; ; attempt++) {
    try {
      await applyChange(backend, { version, snapshot: snapshot.source });
      return snapshot.bytes;
    } catch (err) {
      const walChanged = err instanceof WalChangedError || (err as Error).cause instanceof WalChangedError;
      if (!walChanged || attempt >= SEED_ATTEMPTS) throw err;
      snapshot.close();
      snapshot = again();
    }
  }
}
