/**
 * Takes a change into a backend under the version rules.
 */
import type { Backend, ChangeToStore, SyncBackend } from "../backup/backup.js";
import type { CapturedPages, ChangeInput } from "../model/change.js";
import { statementSql } from "../model/change.js";
import { sameStatements } from "../model/change-json.js";
import { checkDeterministic } from "../model/determinism.js";
import { InputError } from "../util/errors.js";
import { decide, type Action } from "../model/version-rules.js";

/** What happened to an ingested change. */
export interface IngestResult {
  /** The change's version, now the backup head. */
  readonly version: number;
  /**
   * What the version rules decided; `"unchanged"`: the change repeats the stored head exactly
   * (a retry), which is acknowledged again and nothing is written.
   */
  readonly action: Action | "unchanged";
  /**
   * Set when the change's timestamp was before the timestamp of the change it follows: it was
   * stored as that one (this), so that the backup's times never go backwards.
   */
  readonly timestampClampedTo?: number;
}

/** How a door takes changes. */
export interface IngestOptions {
  /**
   * Accept SQL that reads the clock or random numbers (`random()`, `datetime('now')`, …),
   * which replays to a different database. Off by default (E_NONDETERMINISTIC); copies of
   * changes a backup already holds (replicas, copy) set it, since those were checked (or
   * accepted) where they came in.
   */
  readonly allowNondeterministic?: boolean;
}

/**
 * Applies the version rules to `change` and stores it; resolves once it is durable. Calls for
 * one backend must not overlap. A redo (the head's version again) is one record that replaces
 * the head; a redo identical to the head is acknowledged without a write.
 */
export async function applyChange(backend: Backend, change: ChangeInput, options: IngestOptions = {}): Promise<IngestResult> {
  const { action, toStore, clamped } = plan(backend, change, options);
  if (action === "rewind-then-append" && (await repeatsHead(backend, toStore))) return { version: change.version, action: "unchanged" };
  await backend.addChange(toStore);
  return result(change.version, action, clamped);
}

/** applyChange for a transaction-only change, synchronously, on a backend that can. */
export function applyChangeSync(backend: SyncBackend, change: ChangeInput, options: IngestOptions = {}): IngestResult {
  if (change.snapshot) throw new InputError("a snapshot cannot be stored synchronously; use applyChange");
  const { action, toStore, clamped } = plan(backend, change, options);
  backend.addChangeSync(toStore);
  return result(change.version, action, clamped);
}

function result(version: number, action: Action, clamped: number | undefined): IngestResult {
  return { version, action, ...(clamped !== undefined && { timestampClampedTo: clamped }) };
}

/** Validates a change and decides what the version rules make of it. */
function plan(backend: Backend, change: ChangeInput, options: IngestOptions): { action: Action; toStore: ChangeToStore; clamped?: number } {
  if (!Number.isSafeInteger(change.version) || change.version < 1) {
    throw new InputError(`change version must be an integer >= 1, got ${String(change.version)}`, {
      hint: `versions go up to ${Number.MAX_SAFE_INTEGER} (2^53 - 1), the largest integer a JSON number carries exactly`,
    });
  }
  if (change.snapshot === undefined && change.transaction === undefined && change.captured === undefined) {
    throw new InputError(`change ${change.version} carries neither a transaction nor a snapshot`);
  }
  if (change.timestamp !== undefined && !(Number.isSafeInteger(change.timestamp) && change.timestamp >= 0)) {
    throw new InputError(`change ${change.version}: timestamp must be an integer of milliseconds >= 0, got ${String(change.timestamp)}`);
  }
  if (!options.allowNondeterministic && change.transaction) {
    for (const st of change.transaction) checkDeterministic(statementSql(st));
  }
  const continuation = change.continuation === true;
  const head = backend.head();
  const action = decide(head, { version: change.version, hasSnapshot: change.snapshot !== undefined, continuation });
  // A redo follows the change before the head; anything else follows the head.
  const times = backend.lastTimestamps();
  const after = action === "rewind-then-append" ? times.prev : times.head;
  const given = change.timestamp ?? Date.now();
  const clamped = after !== undefined && given < after ? after : undefined;
  return {
    action,
    ...(clamped !== undefined && { clamped }),
    toStore: {
      version: change.version,
      timestamp: clamped ?? given,
      ...(change.snapshot && { snapshot: change.snapshot }),
      ...(change.transaction && { transaction: change.transaction }),
      ...(continuation && { continuation: true }),
      ...(action === "rewind-then-append" && { replacesLast: true }),
      ...(change.captured && { captured: change.captured }),
    },
  };
}

/**
 * Whether a redo carries exactly what the head holds (a client's retry): the same
 * statements and parameters, or the same captured pages. A redo with a snapshot is always
 * stored (its bytes arrive as a stream, read once); it replaces the head in one record either way.
 */
async function repeatsHead(backend: Backend, change: ChangeToStore): Promise<boolean> {
  if (change.snapshot) return false;
  const held = await backend.lastChange();
  return held !== null && held.version === change.version && !held.snapshot && sameContent(held, change);
}

/**
 * Whether two changes carry the same content: statements and parameters, captured pages, the
 * continuation flag; timestamps aside. Changes with snapshots are never the same (their bytes
 * are a stream, read once).
 */
export function sameContent(a: Omit<ChangeInput, "version" | "snapshot"> & { readonly snapshot?: unknown }, b: typeof a): boolean {
  if (a.snapshot || b.snapshot || (a.continuation === true) !== (b.continuation === true)) return false;
  return sameStatements(a.transaction, b.transaction) && sameCaptured(a.captured, b.captured);
}

function sameCaptured(a: CapturedPages | undefined, b: CapturedPages | undefined): boolean {
  if (!a || !b) return a === b;
  if (a.pageSize !== b.pageSize || a.dbPages !== b.dbPages || a.transactions !== b.transactions) return false;
  if (JSON.stringify(a.wal) !== JSON.stringify(b.wal) || a.pages.length !== b.pages.length) return false;
  return a.pages.every((p, i) => p.pgno === b.pages[i]!.pgno && Buffer.compare(p.data, b.pages[i]!.data) === 0);
}
