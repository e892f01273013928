/**
 * Copy: moves a whole backup between any two backends (file to S3, S3 to file, …).
 *
 * Every change is read through its checksums and stored again under the version rules, so
 * the copy holds exactly the live history: its base, then every change up to the head.
 * Rewound changes are not copied, and a head that cannot be rewound stays so.
 */
import type { Backend } from "./backend.js";
import { TidemarkError } from "./errors.js";
import { applyChange } from "./ingest.js";

/** Options for {@link copyBackup}. */
export interface CopyOptions {
  /** Empty a destination that holds changes, instead of refusing it. */
  readonly force?: boolean;
  /** Called after each change with versions done and versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** What a copy did. */
export interface CopyResult {
  /** The head of both backups. */
  readonly version: number;
  readonly changes: number;
  readonly snapshots: number;
  readonly durationMs: number;
}

/** Copies `src` into `dst`. */
export async function copyBackup(src: Backend, dst: Backend, options: CopyOptions = {}): Promise<CopyResult> {
  const started = performance.now();
  const from = await src.status();
  if (dst.head().version !== 0) {
    if (!options.force) {
      throw new TidemarkError("E_EXISTS", `${dst.location} already holds changes (head ${dst.head().version}); copy never merges`, {
        hint: "copy to an empty location, or add --force to replace what it holds",
      });
    }
    await dst.reset();
  }
  let changes = 0;
  let snapshots = 0;
  if (from.version > 0) {
    for await (const change of src.streamChanges({ from: from.firstVersion, to: from.version })) {
      await applyChange(dst, {
        version: change.version,
        timestamp: change.timestamp,
        ...(change.snapshot && { snapshot: change.snapshot.open() }),
        ...(change.transaction && { transaction: change.transaction }),
      });
      changes++;
      if (change.snapshot) snapshots++;
      options.onProgress?.(change.version - from.firstVersion + 1, from.version - from.firstVersion + 1);
    }
    if (from.prevVersion === null) {
      // The source's head was already rewound once; so must the copy's be. An empty change is
      // appended and rewound: rewound changes are never replayed.
      await applyChange(dst, { version: from.version + 1, timestamp: Date.now(), transaction: [] });
      await dst.rewind();
    }
  }
  const to = dst.head();
  if (to.version !== from.version || to.prevVersion !== from.prevVersion) {
    throw new TidemarkError("E_BACKEND", `the copy ended at head ${to.version} (rewind to ${to.prevVersion}), not ${from.version} (${from.prevVersion})`, {
      hint: "the source changed during the copy; stop its writer and copy again with --force",
    });
  }
  return { version: to.version, changes, snapshots, durationMs: performance.now() - started };
}
