/**
 * Copy: moves a whole backup between any two backends (file to S3, S3 to file, …).
 *
 * Every change is read through its checksums and stored again under the version rules, so
 * the copy holds exactly the live history: its base, then every change up to the head.
 * Rewound changes are not copied, and a head that cannot be rewound stays so.
 */
import type { Backend, BackendStatus } from "../backup/backup.js";
import type { StoredChange } from "../model/change.js";
import { sameStatements } from "../model/change-json.js";
import { TidemarkError } from "../util/errors.js";
import { applyChange, applyCopy } from "./ingest.js";
import { refuseDamagedHead } from "./point-in-time.js";

/** Options for {@link copyBackup}. */
export interface CopyOptions {
  /** Empty a destination that holds changes, instead of refusing it. */
  readonly force?: boolean;
  /** Called after each change with versions done and versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Stops the copy, which then fails as any failed copy does (the destination is emptied). */
  readonly signal?: AbortSignal;
}

/** What a copy did. */
export interface CopyResult {
  /** The head of both backups. */
  readonly version: number;
  readonly changes: number;
  readonly snapshots: number;
  readonly durationMs: number;
}

/**
 * Copies `src` into `dst`. While it runs, `dst` is marked incomplete, so that a copy killed
 * part-way is never mistaken for a backup (opening it is refused, naming `copy --force`); a
 * copy that fails empties `dst` again.
 */
export async function copyBackup(src: Backend, dst: Backend, options: CopyOptions = {}): Promise<CopyResult> {
  const started = performance.now();
  const from = await src.status();
  refuseDamagedHead(from, "the head a copy would end at");
  const held = await dst.status();
  if ((held.version !== 0 || held.generations.length > 0) && !options.force) {
    throw new TidemarkError("E_EXISTS", `${dst.location} already holds changes (head ${held.version}); copy never merges`, {
      hint: "copy to an empty location, or add --force to replace what it holds",
    });
  }
  // Marked first: a copy killed from here on, even while emptying the destination, leaves
  // something every open refuses.
  await dst.markIncomplete(`copy of ${src.location}`);
  if (options.force) await dst.reset();
  try {
    const result = await copyInto(src, dst, from, started, options);
    await dst.markIncomplete(undefined);
    return result;
  } catch (err) {
    let note = `the copy at ${dst.location} was emptied again`;
    let emptied = true;
    await dst
      .reset()
      .then(() => dst.markIncomplete(undefined))
      .catch((cleanup: unknown) => {
        emptied = false;
        note = `emptying the partial copy at ${dst.location} failed too (${(cleanup as Error).message}); run copy --force before using it`;
      });
    // An interrupt's "nothing was written" is true once the copy is emptied; otherwise it must say so.
    const interrupted = err instanceof TidemarkError && err.code === "E_INTERRUPTED";
    if (err instanceof TidemarkError && (!interrupted || !emptied)) err.message = `${err.message} (${note})`;
    throw err;
  }
}

async function copyInto(src: Backend, dst: Backend, from: BackendStatus, started: number, options: CopyOptions): Promise<CopyResult> {
  let changes = 0;
  let snapshots = 0;
  const total = from.version === 0 ? 0 : from.version - from.firstVersion + 1;
  let done = 0;
  // Each generation in turn, oldest first. The first is copied change by change; each later
  // one starts with its base, which the copy installs by compacting at the same version (so
  // the copy's older generation is retained as the source's was), and goes on with the changes
  // the copy does not hold yet.
  const gens = from.generations;
  for (const [i, g] of gens.entries()) {
    if (g.lastVersion === 0) continue;
    // An older generation is copied up to the change after the next base, as a file backup
    // keeps it; the rest comes with the next generation. (On S3 every generation's changes
    // run to the head, and would otherwise be copied into each.)
    const next = gens[i + 1];
    const to = next ? Math.min(g.lastVersion, next.baseVersion + 1) : g.lastVersion;
    for await (const change of src.streamChanges({ from: g.firstVersion, to })) {
      if (i > 0 && change.snapshot && change.version === g.baseVersion && dst.head().version >= change.version) {
        await settle(dst, change.version);
        await dst.compact({ version: change.version, timestamp: change.timestamp, snapshot: () => change.snapshot!.open() });
        snapshots++;
        continue;
      }
      const head = dst.head().version;
      // Held already, from the previous generation's copy of the same change.
      if (change.version < head || (change.version === head && (await sameAsHead(dst, change)))) continue;
      await applyCopy(dst, change);
      changes++;
      if (change.snapshot) snapshots++;
      done = Math.max(done, change.version - from.firstVersion + 1);
      options.onProgress?.(done, total);
      options.signal?.throwIfAborted();
    }
  }
  // An older generation reaches one change past the source's head when the source rewound
  // that change after its last compaction: rewind it in the copy too.
  const held = dst.head();
  if (held.version === from.version + 1 && held.prevVersion === from.version) await dst.rewind();
  if (from.version > 0 && from.prevVersion === null && dst.head().prevVersion !== null) await settle(dst, from.version);
  const to = dst.head();
  if (to.version !== from.version || to.prevVersion !== from.prevVersion) {
    throw new TidemarkError("E_BACKEND", `the copy ended at head ${to.version} (rewind to ${to.prevVersion}), not ${from.version} (${from.prevVersion})`, {
      hint: "the source changed during the copy; stop its writer and copy again with --force",
    });
  }
  return { version: to.version, changes, snapshots, durationMs: performance.now() - started };
}

/**
 * Makes `version`, the copy's head, impossible to rewind, as it is in the source: the source's
 * head was rewound once already, or it is a base compacted right after a rewind. An empty
 * change is appended and rewound: rewound changes are never replayed.
 */
async function settle(dst: Backend, version: number): Promise<void> {
  const head = dst.head();
  if (head.version !== version || head.prevVersion === null) return;
  await applyChange(dst, { version: version + 1, timestamp: Date.now(), transaction: [] }, { validate: false });
  await dst.rewind();
}

/** Whether `change` is the very change the copy holds as its head. */
async function sameAsHead(dst: Backend, change: StoredChange): Promise<boolean> {
  for await (const held of dst.streamChanges({ from: change.version, to: change.version })) {
    if (held.version !== change.version) continue;
    return held.timestamp === change.timestamp && !held.snapshot && !change.snapshot && sameStatements(held.transaction, change.transaction) && JSON.stringify(held.captured?.wal) === JSON.stringify(change.captured?.wal);
  }
  return false;
}

