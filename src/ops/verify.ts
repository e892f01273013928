/**
 * Verify: reads every record and snapshot of a backup (every generation retention keeps) and
 * checks checksums, version contiguity, decryptability, and that each snapshot is a SQLite
 * file. With `restore`, it also rebuilds the head into a temp file, runs integrity_check, and
 * compares the version. It never writes to the backup.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Backend, BackendStatus } from "../backup/backup.js";
import { TidemarkError } from "../util/errors.js";
import { canFollow } from "../model/version-rules.js";
import { restore } from "./restore.js";
import type { Rule } from "./rewrite.js";

const SQLITE_HEADER = Buffer.from("SQLite format 3\0", "latin1");

/** One thing found wrong. */
export interface VerifyProblem {
  readonly code: string;
  readonly message: string;
  readonly version?: number;
}

/** The outcome of {@link verify}. */
export interface VerifyReport {
  readonly ok: boolean;
  readonly status: BackendStatus;
  /** Change records read and checked. */
  readonly records: number;
  /** Snapshot blobs read and checked. */
  readonly snapshots: number;
  /** SQLite bytes read from snapshots. */
  readonly snapshotBytes: number;
  /** With `restore`: the version the test restore reached, and how long it took. */
  readonly restored?: { readonly version: number; readonly durationMs: number };
  readonly problems: VerifyProblem[];
}

/** Options for {@link verify}. */
export interface VerifyOptions {
  /** Called after each change with versions done and versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Also restore the head into a temp file and check it with integrity_check. */
  readonly restore?: boolean;
  /** Rewrite rules for that restore. */
  readonly rules?: readonly Rule[];
  /** Where the temp file goes; the OS temp directory by default. */
  readonly tmpDir?: string;
  /** Stops the verify: it rejects with the reason (an interrupt is not a problem found). */
  readonly signal?: AbortSignal;
}

/** Checks every record and snapshot of `backend`. Damage is reported, not thrown. */
export async function verify(backend: Backend, options: VerifyOptions = {}): Promise<VerifyReport> {
  const status = await backend.status();
  const problems: VerifyProblem[] = [];
  let records = 0;
  let snapshots = 0;
  let snapshotBytes = 0;
  // A damaged live base is reported where its frames are read, below.
  if (status.damage && !status.damage.snapshot) {
    const d = status.damage;
    problems.push({ code: "E_CORRUPT", message: `${d.message} (readable up to version ${d.intactVersion}; nothing after it)` });
  }
  for (const g of status.generations) {
    if (g.damage) problems.push({ code: "E_CORRUPT", message: `${g.damage.message} (the generation from version ${g.firstVersion} is readable up to version ${g.damage.intactVersion})` });
  }
  if (status.version === 0) return { ok: problems.length === 0, status, records, snapshots, snapshotBytes, problems };

  // Each generation held (older bases kept by retention, then the live one) is read whole.
  const total = status.generations.reduce((n, g) => n + g.lastVersion - g.firstVersion + 1, 0);
  let done = 0;
  for (const g of status.generations) {
    if (g.lastVersion === 0) continue; // damaged from its start: reported above
    let prev = 0;
    try {
      for await (const change of backend.streamChanges({ from: g.firstVersion, to: g.lastVersion })) {
        const v = change.version;
        const follows = canFollow(prev, v, change.snapshot !== undefined, change.continuation === true);
        if (!follows) problems.push({ code: "E_CORRUPT", version: v, message: `version ${v} does not follow version ${prev}` });
        prev = v;
        records++;
        if (change.snapshot) {
          snapshots++;
          try {
            snapshotBytes += await readSnapshot(change.snapshot.open(), v);
          } catch (err) {
            problems.push(problemOf(err, v));
          }
        }
        options.onProgress?.(++done, total);
        options.signal?.throwIfAborted();
      }
      if (prev !== g.lastVersion) {
        problems.push({ code: "E_CORRUPT", version: prev, message: `the generation from version ${g.firstVersion} ends at ${prev}, not at ${g.lastVersion}` });
      }
    } catch (err) {
      if (options.signal?.aborted) throw err;
      problems.push(problemOf(err));
    }
  }
  let restored: VerifyReport["restored"];
  if (options.restore && problems.length === 0) {
    const dir = fs.mkdtempSync(path.join(options.tmpDir ?? os.tmpdir(), "tidemark-verify-"));
    try {
      const r = await restore(backend, path.join(dir, "verify.db"), {
        version: status.version,
        ...(options.rules && { rules: options.rules }),
        ...(options.signal && { signal: options.signal }),
      });
      restored = { version: r.version, durationMs: r.durationMs };
      if (r.version !== status.version) {
        problems.push({ code: "E_RESTORE", version: r.version, message: `the test restore reached version ${r.version}, not the head ${status.version}` });
      }
    } catch (err) {
      // An interrupt is not a problem with the backup.
      if (options.signal?.aborted) throw err;
      problems.push(problemOf(err));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  return { ok: problems.length === 0, status, records, snapshots, snapshotBytes, ...(restored && { restored }), problems };
}

/** Reads a snapshot through its checksums; returns its size. */
async function readSnapshot(stream: AsyncIterable<Buffer>, version: number): Promise<number> {
  let size = 0;
  for await (const chunk of stream) {
    if (size === 0 && chunk.length >= SQLITE_HEADER.length && !chunk.subarray(0, SQLITE_HEADER.length).equals(SQLITE_HEADER)) {
      throw new TidemarkError("E_CORRUPT", `snapshot of version ${version} is not a SQLite database (bad file header)`);
    }
    size += chunk.length;
  }
  return size;
}

function problemOf(err: unknown, version?: number): VerifyProblem {
  if (err instanceof TidemarkError) {
    const v = (err as { version?: number }).version ?? version;
    return { code: err.code, message: err.message, ...(v !== undefined && { version: v }) };
  }
  throw err;
}
