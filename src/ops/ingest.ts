/**
 * Takes a change into a backend under the version rules, after checking it against the
 * backup's shadow (shadow.ts): statements that cannot apply are refused with E_REPLAY, a
 * snapshot that is not a sound SQLite file with E_INPUT, before anything is durable.
 */
import fs from "node:fs";
import path from "node:path";
import type { Backend, ChangeToStore, SyncBackend } from "../backup/backup.js";
import type { CapturedPages, ChangeInput, StoredChange } from "../model/change.js";
import { statementSql } from "../model/change.js";
import { sameStatements } from "../model/change-json.js";
import { checkDeterministic } from "../model/determinism.js";
import { InputError, TidemarkError } from "../util/errors.js";
import { decide, type Action } from "../model/version-rules.js";
import { Shadow, type ShadowOptions } from "./shadow.js";
import { checkSnapshotFile, openSpool } from "./snapshot-check.js";

const shadows = new WeakMap<Backend, Shadow>();
/** The shadow in use for each shadow file: a backup reopened in this process takes over its file. */
const byFile = new Map<string, Shadow>();

/** The shadow of `backend`, made on first use with `options`. */
export function shadowOf(backend: Backend, options?: ShadowOptions): Shadow {
  let shadow = shadows.get(backend);
  if (!shadow) {
    shadow = new Shadow(backend.location, options);
    // The same backup opened before (and closed without closeShadow): its shadow lets go of the
    // file cleanly, and this one resyncs from it.
    byFile.get(shadow.file)?.close();
    byFile.set(shadow.file, shadow);
    shadows.set(backend, shadow);
  }
  return shadow;
}

/** Warms `backend`'s shadow now (a rebuild after a crash is a replay), so that the first change does not wait. */
export async function prepareShadow(backend: Backend, options?: ShadowOptions): Promise<void> {
  await shadowOf(backend, options).prepare(backend);
}

/** Closes `backend`'s shadow cleanly (the next open resyncs instead of rebuilding); call before closing the backend. */
export function closeShadow(backend: Backend): void {
  const shadow = shadows.get(backend);
  if (!shadow) return;
  shadow.close();
  shadows.delete(backend);
  if (byFile.get(shadow.file) === shadow) byFile.delete(shadow.file);
}

/** Rewinds the backup's last change, and the shadow's. */
export async function rewindChange(backend: Backend): Promise<void> {
  await backend.rewind();
  shadows.get(backend)?.rewound(backend);
}

/** rewindChange, synchronously. */
export function rewindChangeSync(backend: SyncBackend): void {
  backend.rewindSync();
  shadows.get(backend)?.rewound(backend);
}

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
  /**
   * Check the change against the backup's shadow before storing it (the default). Only copies
   * of changes a backup already took (copy, replicas) pass false, which also skips the
   * determinism check. Captured pages are never checked.
   */
  readonly validate?: boolean;
  /** Where the shadow lives and its rewrite rules; used when the backup's shadow is first made. */
  readonly shadow?: ShadowOptions;
}

/**
 * Applies the version rules to `change`, checks it against the backup's shadow, and stores
 * it; resolves once it is durable. Calls for one backend must not overlap. A redo (the head's
 * version again) is one record that replaces the head; a redo identical to the head is
 * acknowledged without a write.
 */
export async function applyChange(backend: Backend, change: ChangeInput, options: IngestOptions = {}): Promise<IngestResult> {
  const { action, toStore, clamped } = plan(backend, change, options);
  const redo = action === "rewind-then-append";
  if (redo && (await repeatsHead(backend, toStore))) return { version: change.version, action: "unchanged" };
  if (options.validate === false || toStore.captured) {
    await backend.addChange(toStore);
    return result(change.version, action, clamped);
  }
  const shadow = shadowOf(backend, options.shadow);
  if (toStore.snapshot) {
    await applySnapshot(backend, shadow, toStore);
    return result(change.version, action, clamped);
  }
  // Without a promise when the shadow is warm and the change needs no replay: the common ack.
  if (!shadow.isWarm(backend)) await shadow.prepare(backend);
  const trial = shadow.beginSync(backend, toStore, redo) ?? (await shadow.begin(backend, toStore, redo));
  try {
    await backend.addChange(toStore);
  } catch (err) {
    shadow.abort(backend, trial);
    throw err;
  }
  shadow.settle(backend, toStore);
  return result(change.version, action, clamped);
}

/**
 * Stores a change another backup holds already (a copy, a replica): under the version rules,
 * as it is, since it was checked (or accepted) where it came in; its snapshot is read anew.
 */
export function applyCopy(backend: Backend, change: StoredChange): Promise<IngestResult> {
  return applyChange(
    backend,
    {
      version: change.version,
      timestamp: change.timestamp,
      ...(change.snapshot && { snapshot: change.snapshot.open() }),
      ...(change.transaction && { transaction: change.transaction }),
      ...(change.continuation && { continuation: true }),
      ...(change.captured && { captured: change.captured }),
    },
    { validate: false },
  );
}

/**
 * applyChange for a transaction-only change, synchronously, on a backend that can. The change
 * is checked when the shadow is warm (or resyncs from its clean marker); after a crash it is
 * stored unchecked until an asynchronous call (or prepareShadow) has rebuilt the shadow.
 */
export function applyChangeSync(backend: SyncBackend, change: ChangeInput, options: IngestOptions = {}): IngestResult {
  if (change.snapshot) throw new InputError("a snapshot cannot be stored synchronously; use applyChange");
  const { action, toStore, clamped } = plan(backend, change, options);
  const redo = action === "rewind-then-append";
  const shadow = options.validate === false || toStore.captured ? null : shadowOf(backend, options.shadow);
  const trial = shadow?.prepareSync(backend) ? shadow.beginSync(backend, toStore, redo) : null;
  try {
    backend.addChangeSync(toStore);
  } catch (err) {
    if (trial) shadow!.abort(backend, trial);
    throw err;
  }
  if (trial) shadow!.settle(backend, toStore);
  else shadow?.forget(); // stored unchecked: the next prepare() rebuilds the state
  return result(change.version, action, clamped);
}

function result(version: number, action: Action, clamped: number | undefined): IngestResult {
  return clamped === undefined ? { version, action } : { version, action, timestampClampedTo: clamped };
}

/**
 * A change carrying a snapshot, read once: each chunk goes to a private temp file (the spool)
 * and on to the backend's blob. When the last chunk is in, the spool is checked and the
 * transaction applied to a copy of it — still inside the snapshot's stream, so the blob is not
 * finished (and no record points to it) unless both pass: a refused snapshot leaves nothing
 * durable. Then the record is stored (replacing the last change in the same record for a
 * redo), and the checked file becomes the shadow's state.
 */
async function applySnapshot(backend: Backend, shadow: Shadow, toStore: ChangeToStore): Promise<void> {
  const spool = await openSpool(path.join(path.dirname(shadow.file), "tmp"));
  let state = spool.file;
  let checked = false;
  /** What failed on this side of the stream (the sender, the spool, the check): thrown as it is, not as the backend's. */
  let failed: { err: unknown } | undefined;
  async function* spooledAndChecked(): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of toStore.snapshot!) {
        await spool.write(chunk);
        yield chunk;
      }
      await spool.close();
      checkSnapshotFile(spool.file, toStore.version);
      if (toStore.transaction?.length) {
        state = `${spool.file}.state`;
        await fs.promises.copyFile(spool.file, state, fs.constants.COPYFILE_FICLONE);
        shadow.applyToFile(state, toStore);
      }
    } catch (err) {
      failed = { err };
      throw err;
    }
    checked = true;
  }
  try {
    try {
      await backend.addChange({ ...toStore, snapshot: spooledAndChecked() });
    } catch (err) {
      throw failed ? failed.err : err;
    }
    // A backend reads its snapshot to the end before it stores the record; if one did not, the
    // file was not checked and nothing may stand on it.
    if (!checked) throw new TidemarkError("E_INTERNAL", `the backend stored snapshot ${toStore.version} without reading it to its end`);
    shadow.replaceWith(backend, state, toStore);
  } finally {
    await spool.close().catch(() => {});
    fs.rmSync(spool.file, { force: true });
    if (state !== spool.file) fs.rmSync(state, { force: true });
  }
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
  if (!options.allowNondeterministic && options.validate !== false && change.transaction) {
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
  // Built field by field, not by conditional spreads: this runs on every ack.
  const toStore: { -readonly [K in keyof ChangeToStore]: ChangeToStore[K] } = { version: change.version, timestamp: clamped ?? given };
  if (change.snapshot) toStore.snapshot = change.snapshot;
  if (change.transaction) toStore.transaction = change.transaction;
  if (continuation) toStore.continuation = true;
  if (action === "rewind-then-append") toStore.replacesLast = true;
  if (change.captured) toStore.captured = change.captured;
  return clamped === undefined ? { action, toStore } : { action, toStore, clamped };
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
