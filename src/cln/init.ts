/**
 * `tidemark cln init`: sets up a Core Lightning node's backup, as the Python plugin's
 * `backup-cli init` did. It creates the backup, seeds it with a snapshot of `lightningd.sqlite3`
 * at its `data_version` when that exists, and only then writes `backup.lock`, so the plugin
 * never finds a lock that points at nothing.
 */
import fs from "node:fs";
import path from "node:path";
import { openBackend } from "../backup/registry.js";
import { connect } from "../host/client.js";
import { assertLockWritable, resolveLocation, writeBackupLock, type DaemonTarget } from "./lock.js";
import { NODE_DB_FILE, nodeDbPath, snapshotNodeDb, type NodeSnapshot } from "./node-db.js";
import { InputError, TidemarkError, UsageError } from "../util/errors.js";
import { applyChange } from "../ops/ingest.js";
import type { Logger } from "../util/logger.js";

/** What to set up. */
export interface ClnInitOptions {
  /** The network directory, such as `~/.lightning/bitcoin`. */
  readonly lightningDir: string;
  /** The new backup's location; with `daemon`, the daemon database's backend, recorded for restores. */
  readonly backend?: string;
  /** Write through this daemon database instead of opening the backend. */
  readonly daemon?: DaemonTarget;
  /** Replace an existing `backup.lock`. */
  readonly force: boolean;
  readonly log: Logger;
}

/** What was set up. */
export interface ClnInitResult {
  readonly lockFile: string;
  /** Where the changes go, for people. */
  readonly destination: string;
  /** The snapshot's data_version, or null when there was no node database to seed from. */
  readonly seededVersion: number | null;
  readonly snapshotBytes: number;
}

/** Creates and seeds the backup, then writes `backup.lock`. */
export async function clnInit(options: ClnInitOptions): Promise<ClnInitResult> {
  const dir = path.resolve(options.lightningDir);
  const backendUrl = options.backend === undefined ? undefined : resolveLocation(options.backend, process.cwd());
  if (backendUrl === undefined && !options.daemon) {
    throw new UsageError("give the backup location, or --daemon-socket", {
      hint: "tidemark cln init /var/lib/tidemark/cln --lightning-dir ~/.lightning/bitcoin",
    });
  }
  assertLockWritable(dir, options.force);
  const dbFile = nodeDbPath(dir);
  if (dbFile === null) refuseBaseDirectory(dir);
  const snapshot = dbFile === null ? null : await snapshotNodeDb(dbFile);
  try {
    const destination = options.daemon
      ? await seedThroughDaemon(options.daemon, snapshot)
      : await seedBackend(backendUrl!, snapshot, options.log); // set when there is no daemon, checked above
    const lockFile = writeBackupLock(
      dir,
      { ...(backendUrl !== undefined && { backendUrl }), ...(options.daemon && { daemon: options.daemon }) },
      options.force,
    );
    return { lockFile, destination, seededVersion: snapshot?.dataVersion ?? null, snapshotBytes: snapshot?.bytes ?? 0 };
  } finally {
    snapshot?.dispose();
  }
}

async function seedBackend(location: string, snapshot: NodeSnapshot | null, log: Logger): Promise<string> {
  const backend = await openBackend(location, { mode: "create", log });
  try {
    if (snapshot) await applyChange(backend, { version: snapshot.dataVersion, snapshot: fs.createReadStream(snapshot.file) });
    return backend.location;
  } finally {
    await backend.close();
  }
}

async function seedThroughDaemon(daemon: DaemonTarget, snapshot: NodeSnapshot | null): Promise<string> {
  // A person is waiting: a few quick attempts, not the plugin's 25 seconds of retries.
  const client = connect({ socket: daemon.socket, db: daemon.db, attempts: 3 });
  const where = `database "${daemon.db}" of the daemon at ${daemon.socket}`;
  try {
    const head = await client.head();
    if (head.version !== 0) {
      throw new TidemarkError("E_EXISTS", `${where} is not empty: its head is version ${head.version}`, {
        hint: "give this node a database of its own: add one to the daemon's config and pass it as --daemon-db",
      });
    }
    if (snapshot) await client.addSnapshot(snapshot.dataVersion, snapshot.file);
    return where;
  } finally {
    client.close();
  }
}

/**
 * Refuses a directory that holds no node database while a subdirectory does: the base
 * directory (`~/.lightning`) given instead of the network directory (`~/.lightning/bitcoin`),
 * where lightningd looks for `backup.lock`.
 */
function refuseBaseDirectory(dir: string): void {
  const network = fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && fs.existsSync(path.join(dir, e.name, NODE_DB_FILE)))
    .map((e) => e.name);
  if (network.length === 0) return;
  throw new InputError(`${dir} holds no ${NODE_DB_FILE}, but ${network.map((n) => path.join(dir, n)).join(" and ")} does`, {
    hint: `give the network directory: --lightning-dir ${path.join(dir, network[0]!)}`,
  });
}
