/**
 * Takes a change into a backend under the version rules.
 */
import type { Backend, ChangeToStore, SyncBackend } from "../backup/backup.js";
import type { ChangeInput } from "../model/change.js";
import { InputError } from "../util/errors.js";
import { decide, type Action } from "../model/version-rules.js";

/** What happened to an ingested change. */
export interface IngestResult {
  /** The change's version, now the backup head. */
  readonly version: number;
  /** What the version rules decided. */
  readonly action: Action;
}

/**
 * Applies the version rules to `change` and stores it; resolves once it is durable. Calls for
 * one backend must not overlap.
 */
export async function applyChange(backend: Backend, change: ChangeInput): Promise<IngestResult> {
  const { action, toStore } = plan(backend, change);
  if (action === "rewind-then-append") await backend.rewind();
  await backend.addChange(toStore);
  return { version: change.version, action };
}

/** applyChange for a transaction-only change, synchronously, on a backend that can. */
export function applyChangeSync(backend: SyncBackend, change: ChangeInput): IngestResult {
  if (change.snapshot) throw new InputError("a snapshot cannot be stored synchronously; use applyChange");
  const { action, toStore } = plan(backend, change);
  if (action === "rewind-then-append") backend.rewindSync();
  backend.addChangeSync(toStore);
  return { version: change.version, action };
}

/** Validates a change and decides what the version rules make of it. */
function plan(backend: Backend, change: ChangeInput): { action: Action; toStore: ChangeToStore } {
  if (!Number.isSafeInteger(change.version) || change.version < 1) {
    throw new InputError(`change version must be an integer >= 1, got ${String(change.version)}`);
  }
  if (change.snapshot === undefined && change.transaction === undefined && change.captured === undefined) {
    throw new InputError(`change ${change.version} carries neither a transaction nor a snapshot`);
  }
  const continuation = change.continuation === true;
  const action = decide(backend.head(), { version: change.version, hasSnapshot: change.snapshot !== undefined, continuation });
  return {
    action,
    toStore: {
      version: change.version,
      timestamp: change.timestamp ?? Date.now(),
      ...(change.snapshot && { snapshot: change.snapshot }),
      ...(change.transaction && { transaction: change.transaction }),
      ...(continuation && { continuation: true }),
      ...(change.captured && { captured: change.captured }),
    },
  };
}
