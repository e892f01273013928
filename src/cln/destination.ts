/**
 * Where the Core Lightning plugin sends changes: straight to a backend it opens as the single
 * writer, or through a running daemon that owns the backend. `backup.lock` decides which.
 */
import path from "node:path";
import type { Backend, BackendHead } from "../backup/backup.js";
import { openBackend } from "../backup/registry.js";
import type { ChangeInput } from "../model/change.js";
import { connect } from "../host/client.js";
import { looksLikeDbak } from "./dbak.js";
import { localPathOf, type BackupLock, type DaemonTarget, type DirectLock } from "./lock.js";
import { compact, type CompactionStats } from "../ops/compaction.js";
import { TidemarkError } from "../util/errors.js";
import { applyChange, closeShadow, shadowOf, type IngestResult } from "../ops/ingest.js";
import type { Logger } from "../util/logger.js";
import { CORE_LIGHTNING_RULES } from "../ops/rewrite.js";

/** An open destination for the node's changes. */
export interface ClnDestination {
  /** Where changes go, for messages. */
  readonly description: string;
  /** The command that restores the node database from this backup into `dest`. */
  restoreCommand(dest: string): string;
  /** The head as the version rules see it. */
  head(): Promise<BackendHead>;
  /** Stores a change under the version rules; resolves once it is durable. */
  addChange(change: ChangeInput): Promise<IngestResult>;
  /**
   * Folds the log into a new base snapshot, replaying with the core-lightning rules. `signal`
   * abandons it (nothing is installed); a daemon's compaction runs to the end regardless.
   */
  compact(signal: AbortSignal): Promise<CompactionStats>;
  /** Releases the backend's writer lock, or the daemon connection. */
  close(): Promise<void>;
}

/** Opens the destination `lock` names. */
export async function openDestination(lock: BackupLock, log: Logger): Promise<ClnDestination> {
  if (lock.daemon) return daemonDestination(lock.daemon, lock.backendUrl);
  refuseDbakFile(lock);
  return backendDestination(await openBackend(lock.backendUrl, { mode: "write", log }));
}

/** Changes are checked as a restore with the core-lightning rules replays them. */
const CLN_SHADOW = { rules: CORE_LIGHTNING_RULES };

function backendDestination(backend: Backend): ClnDestination {
  return {
    description: backend.location,
    restoreCommand: (dest) => `tidemark restore ${backend.location} ${dest} --rules core-lightning`,
    head: async () => backend.head(),
    // lightningd's own migrations read the clock (strftime('%s', 'now')): its SQL is taken as it is.
    addChange: (change) => applyChange(backend, change, { allowNondeterministic: true, shadow: CLN_SHADOW }),
    compact: (signal) => compact(backend, { rules: CORE_LIGHTNING_RULES, signal, shadow: shadowOf(backend, CLN_SHADOW) }),
    close: () => {
      closeShadow(backend);
      return backend.close();
    },
  };
}

function daemonDestination({ socket, db }: DaemonTarget, backendUrl: string | undefined): ClnDestination {
  const client = connect({ socket, db });
  return {
    description: `database "${db}" of the tidemark daemon at ${socket}`,
    restoreCommand: (dest) =>
      backendUrl !== undefined
        ? `tidemark restore ${backendUrl} ${dest} --rules core-lightning`
        : `curl --unix-socket ${socket} -o ${dest} http://tidemark/v1/dbs/${db}/backup`,
    head: () => client.head(),
    addChange: (change) => client.addChange(change),
    compact: () => client.compact(),
    close: async () => client.close(),
  };
}

/**
 * Refuses a `backend_url` that still names the Python plugin's `.dbak` file: tidemark never
 * appends to that format, and the history in it must be imported first.
 */
function refuseDbakFile(lock: DirectLock): void {
  const file = localPathOf(lock.backendUrl, path.dirname(lock.file));
  if (file === null || !looksLikeDbak(file)) return;
  throw new TidemarkError("E_INPUT", `${lock.file} points at ${file}, a backup file of the Python backup plugin`, {
    hint: `with lightningd stopped, import it once: tidemark cln import ${file} <new backup directory> --lightning-dir ${path.dirname(lock.file)}`,
  });
}
