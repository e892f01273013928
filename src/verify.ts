/**
 * Verify: reads every record and snapshot of a backup and checks checksums, version
 * contiguity and that each snapshot is a SQLite file. It never writes to the backup.
 */
import type { Backend, BackendStatus } from "./backend.js";
import { TidemarkError } from "./errors.js";

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
  readonly problems: VerifyProblem[];
}

/** Options for {@link verify}. */
export interface VerifyOptions {
  /** Called after each change with versions done and versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** Checks every record and snapshot of `backend`. Damage is reported, not thrown. */
export async function verify(backend: Backend, options: VerifyOptions = {}): Promise<VerifyReport> {
  const status = await backend.status();
  const problems: VerifyProblem[] = [];
  let records = 0;
  let snapshots = 0;
  let snapshotBytes = 0;
  if (status.version === 0) return { ok: true, status, records, snapshots, snapshotBytes, problems };

  let prev = 0;
  try {
    for await (const change of backend.streamChanges({ from: status.firstVersion, to: status.version })) {
      const v = change.version;
      const follows = change.snapshot ? v > prev : v === prev + 1;
      if (!follows) {
        problems.push({ code: "E_CORRUPT", version: v, message: `version ${v} does not follow version ${prev}` });
      }
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
      options.onProgress?.(v - status.firstVersion + 1, status.version - status.firstVersion + 1);
    }
    if (prev !== status.version) {
      problems.push({ code: "E_CORRUPT", version: prev, message: `the log ends at version ${prev}, not at the head ${status.version}` });
    }
  } catch (err) {
    problems.push(problemOf(err));
  }
  return { ok: problems.length === 0, status, records, snapshots, snapshotBytes, problems };
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
