/**
 * Converts a `.dbak` backup of Core Lightning's Python backup plugin into a tidemark backup.
 *
 * The whole file is checked first (`scanDbak`), so a damaged file is refused before anything
 * is written. Then each live record becomes one change under the version rules: a snapshot
 * record is streamed from the file as a new base, a transaction record becomes its statements,
 * and a further record of the same version becomes a continuation of it. Rewound records are
 * left out, so a restore never replays them.
 */
import fs from "node:fs";
import type { Backend } from "../backup/backup.js";
import { readSnapshot, readStatements, type DbakRecord, type DbakScan } from "./dbak.js";
import { withContext } from "../util/errors.js";
import { applyChange, type IngestOptions } from "../ops/ingest.js";
import { CORE_LIGHTNING_RULES } from "../ops/rewrite.js";

/** What an import did. */
export interface DbakImportResult {
  /** Changes written: one per live record. */
  readonly changes: number;
  /** Of those, snapshots. */
  readonly snapshots: number;
  /** Of those, continuations: further records of a version, replayed after its first. */
  readonly continuations: number;
  /** Statements written. */
  readonly statements: number;
  /** The first and last versions written; 0 for an empty backup. */
  readonly firstVersion: number;
  readonly headVersion: number;
  /** Versions with a record the original rewound or never acknowledged (left out, never replayed). */
  readonly supersededVersions: readonly number[];
  /** Versions written after the head that the original never acknowledged (left out). */
  readonly unacknowledgedVersions: readonly number[];
  /** A record cut short at the end of the file, after the head (left out). */
  readonly tornTail: DbakScan["tornTail"];
}

/**
 * lightningd's own migrations read the clock (strftime('%s', 'now')): its history is imported
 * as it is, and each change is checked as a restore with the core-lightning rules would replay it.
 */
const LIGHTNINGD: IngestOptions = { allowNondeterministic: true, shadow: { rules: CORE_LIGHTNING_RULES } };

/**
 * Writes the live records of a scanned `.dbak` file into `backend`, which must be empty and
 * open for writing. `onProgress` receives records done and records in all.
 */
export async function importDbak(scan: DbakScan, backend: Backend, onProgress?: (done: number, total: number) => void): Promise<DbakImportResult> {
  const fd = fs.openSync(scan.file, "r");
  let snapshots = 0;
  let statements = 0;
  let continuations = 0;
  try {
    for (const [i, record] of scan.records.entries()) {
      try {
        if (record.version === scan.records[i - 1]?.version) {
          // scanDbak refuses a kept snapshot that repeats a version: this is a transaction.
          const transaction = readStatements(fd, scan.file, record);
          await applyChange(backend, { version: record.version, transaction, continuation: true }, LIGHTNINGD);
          continuations++;
          statements += transaction.length;
        } else if (record.kind === "snapshot") {
          await applyChange(backend, { version: record.version, snapshot: readSnapshot(scan.file, record) }, LIGHTNINGD);
          snapshots++;
        } else {
          const transaction = readStatements(fd, scan.file, record);
          await applyChange(backend, { version: record.version, transaction }, LIGHTNINGD);
          statements += transaction.length;
        }
      } catch (err) {
        throw withContext(err, describe(record));
      }
      onProgress?.(i + 1, scan.records.length);
    }
  } finally {
    fs.closeSync(fd);
  }
  return {
    changes: scan.records.length,
    snapshots,
    continuations,
    statements,
    firstVersion: scan.records[0]?.version ?? 0,
    headVersion: scan.records.at(-1)?.version ?? 0,
    supersededVersions: scan.superseded.map((r) => r.version),
    unacknowledgedVersions: scan.beyondHead.map((r) => r.version),
    tornTail: scan.tornTail,
  };
}

function describe(record: DbakRecord): string {
  return `${record.kind} record at offset ${record.offset} (version ${record.version})`;
}
