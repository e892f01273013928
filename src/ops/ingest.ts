/**
 * Takes a change into a backend under the version rules, after checking it against the
 * backup's shadow (shadow.ts): statements that cannot apply are refused with E_REPLAY, a
 * snapshot that is not a sound SQLite file with E_INPUT, before anything is durable.
 */
import fs from "node:fs";
import path from "node:path";
import type { Backend, ChangeToStore, SyncBackend } from "../backup/backup.js";
import type { ChangeInput } from "../model/change.js";
import { InputError } from "../util/errors.js";
import { decide, type Action } from "../model/version-rules.js";
import { Shadow, type ShadowOptions } from "./shadow.js";
import { checkSnapshotFile, spoolSnapshot } from "./snapshot-check.js";

/** How applyChange takes a change. */
export interface ApplyOptions {
  /**
   * Check the change against the backup's shadow before storing it (the default). Only copies
   * of changes a backup already took (copy, replicas) pass false. Captured pages are never checked.
   */
  readonly validate?: boolean;
  /** Where the shadow lives and its rewrite rules; used when the backup's shadow is first made. */
  readonly shadow?: ShadowOptions;
}

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
  /** What the version rules decided. */
  readonly action: Action;
}

/**
 * Applies the version rules to `change` and stores it; resolves once it is durable. Calls for
 * one backend must not overlap.
 */
export async function applyChange(backend: Backend, change: ChangeInput, options: ApplyOptions = {}): Promise<IngestResult> {
  const { action, toStore } = plan(backend, change);
  const rewind = action === "rewind-then-append";
  if (options.validate === false || toStore.captured) {
    if (rewind) await backend.rewind();
    await backend.addChange(toStore);
    return { version: change.version, action };
  }
  const shadow = shadowOf(backend, options.shadow);
  if (toStore.snapshot) {
    await applySnapshot(backend, shadow, toStore, rewind);
    return { version: change.version, action };
  }
  await shadow.prepare(backend);
  const trial = await shadow.begin(backend, toStore, rewind);
  try {
    if (rewind) await backend.rewind();
    await backend.addChange(toStore);
  } catch (err) {
    shadow.abort(backend, trial);
    throw err;
  }
  shadow.settle(backend, toStore);
  return { version: change.version, action };
}

/**
 * applyChange for a transaction-only change, synchronously, on a backend that can. The change
 * is checked when the shadow is warm (or resyncs from its clean marker); after a crash it is
 * stored unchecked until an asynchronous call (or prepareShadow) has rebuilt the shadow.
 */
export function applyChangeSync(backend: SyncBackend, change: ChangeInput, options: ApplyOptions = {}): IngestResult {
  if (change.snapshot) throw new InputError("a snapshot cannot be stored synchronously; use applyChange");
  const { action, toStore } = plan(backend, change);
  const rewind = action === "rewind-then-append";
  const shadow = options.validate === false || toStore.captured ? null : shadowOf(backend, options.shadow);
  const trial = shadow?.prepareSync(backend) ? shadow.beginSync(backend, toStore, rewind) : null;
  try {
    if (rewind) backend.rewindSync();
    backend.addChangeSync(toStore);
  } catch (err) {
    if (trial) shadow!.abort(backend, trial);
    throw err;
  }
  if (trial) shadow!.settle(backend, toStore);
  else shadow?.forget(); // stored unchecked: the next prepare() rebuilds the state
  return { version: change.version, action };
}

/**
 * A change carrying a snapshot: spooled to a private temp file, checked, its transaction applied
 * to a copy, stored from the file, and then the checked file becomes the shadow's state.
 */
async function applySnapshot(backend: Backend, shadow: Shadow, toStore: ChangeToStore, rewind: boolean): Promise<void> {
  const spooled = await spoolSnapshot(toStore.snapshot!, path.join(path.dirname(shadow.file), "tmp"));
  let state = spooled;
  try {
    checkSnapshotFile(spooled, toStore.version);
    if (toStore.transaction?.length) {
      state = `${spooled}.state`;
      await fs.promises.copyFile(spooled, state, fs.constants.COPYFILE_FICLONE);
      shadow.applyToFile(state, toStore);
    }
    if (rewind) await backend.rewind();
    await backend.addChange({ ...toStore, snapshot: fs.createReadStream(spooled, { highWaterMark: 1 << 20 }) });
    shadow.replaceWith(backend, state, toStore);
  } finally {
    fs.rmSync(spooled, { force: true });
    if (state !== spooled) fs.rmSync(state, { force: true });
  }
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
