/**
 * `tidemark init <backend> [--from-db PATH --version N]`
 */
import fs from "node:fs";
import type { Command } from "commander";
import { UsageError } from "../util/errors.js";
import { terminalLogger } from "../util/logger.js";
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
        "live SQLite database (taken with SQLite's backup API, safe while the host writes) as version N.",
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
      const [{ openBackend }, { applyChange }] = await Promise.all([import("../backup/registry.js"), import("../ops/ingest.js")]);
      const snapshot = opts.fromDb ? await (await import("../ops/sqlite-snapshot.js")).snapshotSqlite(opts.fromDb, `--from-db ${opts.fromDb}`) : undefined;
      try {
        const backend = await openBackend(location, { ...codecOptions(opts), ...retentionOptions(opts), mode: "create", log: terminalLogger() });
        try {
          if (snapshot && opts.version !== undefined) {
            await applyChange(backend, { version: opts.version, snapshot: fs.createReadStream(snapshot.file) });
            process.stdout.write(`created backup at ${backend.location}, seeded at version ${opts.version} (${formatBytes(snapshot.bytes)} snapshot)\n`);
          } else {
            process.stdout.write(`created empty backup at ${backend.location}; the first change must be version 1 or carry a snapshot\n`);
          }
        } finally {
          await backend.close();
        }
      } finally {
        snapshot?.dispose();
      }
    });
}
