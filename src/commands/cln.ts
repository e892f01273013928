/**
 * Core Lightning commands: `tidemark cln-plugin`, `tidemark cln init`, `tidemark cln import`.
 */
import path from "node:path";
import type { Command } from "commander";
import type { DbakImportResult } from "../cln/import.js";
import { UsageError } from "../util/errors.js";
import { terminalLogger } from "../util/logger.js";
import { createProgress } from "./progress.js";
import { formatBytes, printJson, withBackend } from "./common.js";

const DOCS = "docs/core-lightning.md";

/** Registers the Core Lightning commands. */
export function registerCln(program: Command): void {
  registerPlugin(program);
  const cln = program
    .command("cln")
    .summary("set up Core Lightning backups: init, import")
    .description(
      "Core Lightning integration. tidemark cln-plugin is the plugin lightningd\n" +
        "runs; these commands set it up. Run them with lightningd stopped.\n" +
        "See docs/core-lightning.md.",
    );
  registerInit(cln);
  registerImport(cln);
}

function registerPlugin(program: Command): void {
  program
    .command("cln-plugin")
    .summary("run as a Core Lightning plugin (the db_write hook)")
    .description(
      "Run as a Core Lightning plugin, speaking JSON-RPC on stdin and stdout.\n" +
        "lightningd reports each database transaction through the db_write hook\n" +
        "before it commits it. The plugin answers \"continue\" only once the change\n" +
        "is durable in the backup. When the backup and the node disagree, it logs\n" +
        "what to do and makes lightningd stop.\n" +
        "\n" +
        "backup.lock in the lightning directory names the backup, as for the Python\n" +
        "backup plugin: {\"backend_url\": \"<backup location>\"}. To write through a\n" +
        "running tidemark daemon instead: {\"daemon_socket\": \"<socket>\",\n" +
        "\"daemon_db\": \"<name>\"}. Create it with tidemark cln init, or convert an\n" +
        "old backup with tidemark cln import.\n" +
        "\n" +
        "lightningd runs a plugin as an executable without arguments: point it at the\n" +
        "tidemark-cln-plugin executable installed with tidemark, which runs this command:\n" +
        "  important-plugin=/usr/local/bin/tidemark-cln-plugin\n" +
        "RPC method: backup-compact (lightning-cli backup-compact).",
    )
    .addHelpText("after", `\nSee ${DOCS} for the migration from the Python plugin and for restores.`)
    .action(async () => {
      if (process.stdin.isTTY) {
        process.stderr.write("tidemark cln-plugin speaks JSON-RPC with lightningd on stdin; see tidemark cln-plugin --help\n");
      }
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once("SIGTERM", onSignal);
      process.once("SIGINT", onSignal);
      const { runClnPlugin } = await import("../cln/plugin.js");
      try {
        await runClnPlugin({ input: process.stdin, output: process.stdout, cwd: process.cwd(), signal: stop.signal });
      } finally {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
      }
    });
}

interface InitCliOptions {
  lightningDir: string;
  force?: boolean;
  daemonSocket?: string;
  daemonDb?: string;
}

function registerInit(cln: Command): void {
  cln
    .command("init")
    .summary("create the node's backup and its backup.lock")
    .description(
      "Create a new tidemark backup for a Core Lightning node, and write\n" +
        "backup.lock in its lightning directory (as backup-cli init of the Python\n" +
        "plugin did). If the directory holds lightningd.sqlite3, the backup starts\n" +
        "from a consistent snapshot of it at its data_version; otherwise it starts\n" +
        "empty, for a node that has never run. Run it with lightningd stopped.\n" +
        "\n" +
        "With --daemon-socket, the node writes through a running tidemark daemon:\n" +
        "the snapshot goes to the daemon database --daemon-db, which must be empty,\n" +
        "and <backend>, if given, is recorded as that database's backend, for\n" +
        "tidemark restore.",
    )
    .argument("[backend]", "the new backup: a directory path, file:PATH, or a backend URL")
    .requiredOption("--lightning-dir <dir>", "the node's network directory, such as ~/.lightning/bitcoin")
    .option("--force", "replace an existing backup.lock (the old backup is left as it is)")
    .option("--daemon-socket <path>", "write through the tidemark daemon on this Unix socket")
    .option("--daemon-db <name>", 'the daemon database for this node (with --daemon-socket; default "default")')
    .addHelpText(
      "after",
      "\nExamples:\n" +
        "  tidemark cln init /var/lib/tidemark/cln --lightning-dir ~/.lightning/bitcoin\n" +
        "  tidemark cln init --lightning-dir ~/.lightning/bitcoin --daemon-socket /run/tidemark/tidemark.sock --daemon-db cln",
    )
    .action(async (backend: string | undefined, opts: InitCliOptions) => {
      if (opts.daemonDb !== undefined && opts.daemonSocket === undefined) {
        throw new UsageError("--daemon-db only applies with --daemon-socket", {
          hint: "tidemark cln init --lightning-dir DIR --daemon-socket /run/tidemark/tidemark.sock --daemon-db cln",
        });
      }
      const [{ clnInit }, { DEFAULT_DAEMON_DB }] = await Promise.all([import("../cln/init.js"), import("../cln/lock.js")]);
      const result = await clnInit({
        lightningDir: opts.lightningDir,
        ...(backend !== undefined && { backend }),
        ...(opts.daemonSocket !== undefined && {
          daemon: { socket: path.resolve(opts.daemonSocket), db: opts.daemonDb ?? DEFAULT_DAEMON_DB },
        }),
        force: opts.force ?? false,
        log: terminalLogger(),
      });
      process.stdout.write(
        result.seededVersion === null
          ? `created an empty backup at ${result.destination}: no lightningd.sqlite3 yet, so lightningd's first write (data_version 1) starts it\n`
          : `created backup at ${result.destination}, seeded with a snapshot of lightningd.sqlite3 at data_version ${result.seededVersion} (${formatBytes(result.snapshotBytes)})\n`,
      );
      process.stdout.write(`wrote ${result.lockFile}\nnext: start lightningd with the tidemark plugin (tidemark cln-plugin --help)\n`);
    });
}

interface ImportCliOptions {
  lightningDir?: string;
  force?: boolean;
  quiet?: boolean;
  json?: boolean;
}

function registerImport(cln: Command): void {
  cln
    .command("import")
    .summary("convert a backup of the Python backup plugin (.dbak)")
    .description(
      "Convert a .dbak file written by Core Lightning's Python backup plugin into\n" +
        "a new tidemark backup, with its history. A version may have several\n" +
        "records: continuations (writes lightningd committed without a new\n" +
        "data_version), which are kept and replayed in order, as the original's\n" +
        "restore does; and records the original rewound (or wrote and never\n" +
        "acknowledged), which its header leaves out of its byte count: those are left\n" +
        "out, and never replayed. Records past the header's head version were never\n" +
        "acknowledged, and are left out too.\n" +
        "\n" +
        "The whole file is checked before anything is written: a damaged or\n" +
        "truncated file is refused with the byte offset, and no backup is created.\n" +
        "A record cut short at the very end, after the head, is a write interrupted\n" +
        "by a crash: it is reported and left out.\n" +
        "\n" +
        "With --lightning-dir, backup.lock is then pointed at the new backup (a lock\n" +
        "that names the imported file is replaced), and the node database's\n" +
        "data_version is compared with the head.\n" +
        "Restore with: tidemark restore <backend> out.sqlite3 --rules core-lightning",
    )
    .argument("<file>", "the .dbak file (the backend_url of the old backup.lock, without file://)")
    .argument("<backend>", "the new backup: a directory path, file:PATH, or a backend URL")
    .option("--lightning-dir <dir>", "also point this node's backup.lock at the new backup")
    .option("--force", "with --lightning-dir: replace a backup.lock that names something else")
    .option("-q, --quiet", "no progress bar and no summary")
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      "\nExample:\n  tidemark cln import /mnt/backup/lightningd.dbak /mnt/backup/tidemark --lightning-dir ~/.lightning/bitcoin",
    )
    .action(async (file: string, location: string, opts: ImportCliOptions) => {
      const [{ scanDbak }, { importDbak }, { assertLockReplaceable, resolveLocation, writeBackupLock }] = await Promise.all([
        import("../cln/dbak.js"),
        import("../cln/import.js"),
        import("../cln/lock.js"),
      ]);
      const dbak = path.resolve(file);
      const scan = scanDbak(dbak);
      if (opts.lightningDir !== undefined) assertLockReplaceable(opts.lightningDir, dbak, opts.force ?? false);
      const progress = createProgress("import", "records", opts.quiet || opts.json);
      let imported: { result: DbakImportResult; backend: string };
      try {
        imported = await withBackend(location, "create", async (backend) => ({
          result: await importDbak(scan, backend, progress.update),
          backend: backend.location,
        }));
      } finally {
        progress.stop();
      }
      const { result, backend } = imported;
      let lockFile: string | undefined;
      let node: NodeComparison | undefined;
      if (opts.lightningDir !== undefined) {
        lockFile = writeBackupLock(opts.lightningDir, { backendUrl: resolveLocation(location, process.cwd()) }, true);
        node = await compareNode(opts.lightningDir, result.headVersion);
      }
      if (node && !node.ok) process.stderr.write(`warning: ${node.message}\n`);
      if (opts.json) return printJson({ file: dbak, backend, ...result, ...(lockFile && { lockFile }), ...(node && { node }) });
      if (!opts.quiet) process.stdout.write(importSummary(dbak, backend, result, lockFile, node));
    });
}

function importSummary(file: string, backend: string, result: DbakImportResult, lockFile?: string, node?: NodeComparison): string {
  const lines = [
    `imported ${result.changes} changes (${result.snapshots} snapshots, ${result.continuations} continuations, ${result.statements} statements), ` +
      `versions ${result.firstVersion}..${result.headVersion}, from ${file} into ${backend}`,
  ];
  if (result.supersededVersions.length > 0) {
    lines.push(
      `left out ${result.supersededVersions.length} rewound record(s), superseded by a later record of the same version: ` +
        `versions ${result.supersededVersions.join(", ")}`,
    );
  }
  if (result.unacknowledgedVersions.length > 0) {
    lines.push(`left out record(s) written after the head and never acknowledged: versions ${result.unacknowledgedVersions.join(", ")}`);
  }
  if (result.tornTail) {
    lines.push(
      `left out ${result.tornTail.bytes} bytes at offset ${result.tornTail.offset}: a record cut short after the head (a write interrupted by a crash)`,
    );
  }
  if (lockFile) lines.push(`wrote ${lockFile}`);
  if (node?.ok) lines.push(node.message);
  lines.push(`restore with: tidemark restore ${backend} lightningd.sqlite3 --rules core-lightning`);
  return `${lines.join("\n")}\n`;
}

/** How the node database stands against the imported backup. */
interface NodeComparison {
  readonly dataVersion: number;
  /** Whether the plugin will accept the node's next write. */
  readonly ok: boolean;
  readonly message: string;
}

async function compareNode(lightningDir: string, head: number): Promise<NodeComparison | undefined> {
  const { nodeDbPath, readDataVersion } = await import("../cln/node-db.js");
  const db = nodeDbPath(lightningDir);
  if (db === null) return undefined;
  const dataVersion = readDataVersion(db);
  if (dataVersion === head) return { dataVersion, ok: true, message: `lightningd.sqlite3 is at data_version ${dataVersion}, the backup's head: in sync` };
  if (dataVersion === head - 1) {
    return {
      dataVersion,
      ok: true,
      message: `lightningd.sqlite3 is at data_version ${dataVersion}: lightningd stopped before committing version ${head}, which the plugin will replace at its first write`,
    };
  }
  return {
    dataVersion,
    ok: false,
    message:
      `lightningd.sqlite3 is at data_version ${dataVersion} but the imported backup ends at version ${head}: ` +
      `the plugin will refuse lightningd's first write. Was the .dbak file copied while lightningd ran? ` +
      `Import a current copy, or start a new backup with tidemark cln init --force`,
  };
}
