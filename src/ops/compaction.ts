/**
 * Compaction: folds the log into a fresh base snapshot.
 *
 * With the backup's warm shadow (shadow.ts), the new base is a copy of the shadow's settled
 * state (every change but the last): no replay. Otherwise it replays the backup into a temp SQLite file up to the last settled version (the change
 * before the head when the head can still be rewound, so that one rewind stays possible),
 * takes a snapshot of it with SQLite's backup API (a captured backup: the pages applied to the
 * base, no SQL, and the file itself), and hands that to the backend to install.
 * Ingest continues meanwhile; the backend only pauses it for the brief install step.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Backend, BackendStatus } from "../backup/backup.js";
import { replayInto } from "./replay.js";
import { Rewriter, type Rule } from "./rewrite.js";
import { checkIntegrity } from "./restore.js";
import type { Shadow } from "./shadow.js";

/** Options for {@link compact}. */
export interface CompactOptions {
  /** Rewrite rules for the replay. */
  readonly rules?: readonly Rule[];
  /** Where the temp database files go; defaults to the OS temp directory. */
  readonly tmpDir?: string;
  /** Progress callback for the replay: versions done, versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Abandons the compaction; nothing is installed, and it rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  /** The backup's shadow: its settled state is the new base when it is warm, instead of a replay. */
  readonly shadow?: Shadow;
  /**
   * Lets a short replay (up to 20,000 changes, or a captured backup) run SQLite on this thread
   * instead of starting a worker, as restore's `inline`: for a process of its own (the CLI),
   * never for a daemon.
   */
  readonly inline?: boolean;
}

/** Record counts and bytes of a backup. */
export interface Footprint {
  readonly records: number;
  readonly bytes: number;
}

/** What a compaction did. */
export interface CompactionStats {
  /** Why nothing was done, when nothing was. */
  readonly skipped?: string;
  /** The version of the new base snapshot (0 when skipped). */
  readonly baseVersion: number;
  readonly before: Footprint;
  readonly after: Footprint;
  /** Statements rewritten during the replay, per rule. */
  readonly rewrites: Record<string, number>;
  readonly replayMs: number;
  readonly snapshotMs: number;
  readonly installMs: number;
  readonly durationMs: number;
}

/** Compacts `backend`. */
export async function compact(backend: Backend, options: CompactOptions = {}): Promise<CompactionStats> {
  const started = performance.now();
  const before = await backend.status();
  const head = backend.head();
  const base = head.prevVersion ?? head.version;
  const rewriter = new Rewriter(options.rules ?? []);
  const skip = (why: string): CompactionStats => ({
    skipped: why,
    baseVersion: 0,
    before: footprint(before),
    after: footprint(before),
    rewrites: rewriter.counts(),
    replayMs: 0,
    snapshotMs: 0,
    installMs: 0,
    durationMs: performance.now() - started,
  });
  if (head.version === 0) return skip("the backup is empty");
  // The last record continues the head version and may be rewound alone: no whole version
  // before it is known to be settled without a walk of the log, and the next version settles it.
  if (head.prevVersion === head.version) return skip(`the last change continues version ${head.version}; compact after the next version`);
  // The live generation's start: older generations kept by retention do not count, or each
  // compaction would install the same base again.
  const liveFirst = before.generations.at(-1)?.firstVersion ?? before.firstVersion;
  if (base <= liveFirst) return skip("nothing precedes the last change but the base");

  const dir = fs.mkdtempSync(path.join(options.tmpDir ?? os.tmpdir(), "tidemark-compact-"));
  try {
    const captured = before.settings?.capture === true;
    if (options.shadow && !captured) {
      // The shadow's file itself is the new base's source: no copy of it is written first.
      const taken = options.shadow.settled(backend);
      if (taken) {
        try {
          if (taken.version > liveFirst) {
            const copied = performance.now();
            options.signal?.throwIfAborted();
            await backend.compact({ version: taken.version, timestamp: taken.timestamp, snapshot: taken.open });
            const done = performance.now();
            return {
              baseVersion: taken.version,
              before: footprint(before),
              after: footprint(await backend.status()),
              rewrites: rewriter.counts(),
              replayMs: 0,
              snapshotMs: copied - started,
              installMs: done - copied,
              durationMs: done - started,
            };
          }
        } finally {
          taken.release();
        }
      }
    }
    const replayPath = path.join(dir, "replay.db");
    const snapshotPath = path.join(dir, "snapshot.db");
    const replayed = await replayInto(backend, replayPath, {
      to: base,
      rewriter,
      ...(options.onProgress && { onProgress: options.onProgress }),
      ...(options.signal && { signal: options.signal }),
      ...(options.inline && { inline: true }),
    });
    const replayDone = performance.now();
    // A captured backup's new base is the rebuilt file itself, page for page (the backup API
    // would renumber nothing but would rewrite page 1's header); the pages after it apply to it.
    try {
      checkIntegrity(await replayed.db.integrityCheck(), replayed.version);
      if (!captured) await replayed.db.backup(snapshotPath);
    } finally {
      await replayed.db.close();
    }
    const snapshotDone = performance.now();
    options.signal?.throwIfAborted();
    const basePath = captured ? replayPath : snapshotPath;
    await backend.compact({
      version: base,
      timestamp: replayed.timestamp,
      snapshot: () => fs.createReadStream(basePath, { highWaterMark: 1 << 20 }),
    });
    const done = performance.now();
    return {
      baseVersion: base,
      before: footprint(before),
      after: footprint(await backend.status()),
      rewrites: rewriter.counts(),
      replayMs: replayDone - started,
      snapshotMs: snapshotDone - replayDone,
      installMs: done - snapshotDone,
      durationMs: done - started,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function footprint(s: BackendStatus): Footprint {
  return { records: s.records, bytes: s.bytes };
}
