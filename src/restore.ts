/**
 * Restore: rebuilds the database from a backup into a new file, all or nothing.
 *
 * It replays into a temp file beside `dest`, runs `PRAGMA integrity_check`, fsyncs, renames
 * into place and fsyncs the directory. An existing `dest` is refused unless `force` is set.
 */
import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import type { Backend } from "./backend.js";
import { InputError, TidemarkError } from "./errors.js";
import { replayInto } from "./replay.js";
import { Rewriter, type Rule } from "./rewrite.js";
import { fsyncDir, fsyncFile, removeDatabaseFiles } from "./fs-util.js";

/** Options for {@link restore}. */
export interface RestoreOptions {
  /** Restore as of this version; defaults to the head. */
  readonly version?: number;
  /** Rewrite rules applied to every statement. */
  readonly rules?: readonly Rule[];
  /** Replace an existing `dest` (and its -wal, -shm and -journal files). */
  readonly force?: boolean;
  /** Progress callback: versions done, versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** What a restore did. */
export interface RestoreResult {
  readonly dest: string;
  /** The version the restored database is at. */
  readonly version: number;
  /** Timestamp of that change. */
  readonly timestamp: number;
  readonly changes: number;
  readonly statements: number;
  /** Statements rewritten, per rule. */
  readonly rewrites: Record<string, number>;
  /** Size of the restored file. */
  readonly bytes: number;
  readonly durationMs: number;
}

const SIDE_FILES = ["-wal", "-shm", "-journal"];

/** Restores `backend` into the SQLite file `dest`. */
export async function restore(backend: Backend, dest: string, options: RestoreOptions = {}): Promise<RestoreResult> {
  const started = performance.now();
  const target = path.resolve(dest);
  checkDestination(target, options.force ?? false);
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.tidemark-${randomBytes(4).toString("hex")}.tmp`);
  const rewriter = new Rewriter(options.rules ?? []);
  try {
    const replayed = await replayInto(backend, tmp, {
      ...(options.version !== undefined && { to: options.version }),
      rewriter,
      ...(options.onProgress && { onProgress: options.onProgress }),
    });
    try {
      checkIntegrity(replayed.db, replayed.version);
    } finally {
      replayed.db.close();
    }
    fsyncFile(tmp);
    if (options.force) for (const s of SIDE_FILES) fs.rmSync(target + s, { force: true });
    fs.renameSync(tmp, target);
    fsyncDir(path.dirname(target));
    return {
      dest: target,
      version: replayed.version,
      timestamp: replayed.timestamp,
      changes: replayed.changes,
      statements: replayed.statements,
      rewrites: rewriter.counts(),
      bytes: fs.statSync(target).size,
      durationMs: performance.now() - started,
    };
  } finally {
    removeDatabaseFiles(tmp);
  }
}

function checkDestination(target: string, force: boolean): void {
  const dir = path.dirname(target);
  let dirStat: fs.Stats;
  try {
    dirStat = fs.statSync(dir);
  } catch {
    throw new InputError(`cannot restore to ${target}: directory ${dir} does not exist`, { hint: `create it first: mkdir -p ${dir}` });
  }
  if (!dirStat.isDirectory()) throw new InputError(`cannot restore to ${target}: ${dir} is not a directory`);
  const existing = ["", ...SIDE_FILES].map((s) => target + s).filter((f) => fs.existsSync(f));
  if (existing.length === 0) return;
  if (fs.existsSync(target) && fs.statSync(target).isDirectory()) {
    throw new InputError(`cannot restore to ${target}: it is a directory`, { hint: "give the path of the database file to create" });
  }
  if (!force) {
    throw new TidemarkError("E_EXISTS", `${existing[0]} already exists; restore never overwrites without --force`, {
      hint: "restore to a new path, or add --force to replace it (its -wal, -shm and -journal files are removed too)",
    });
  }
}

/** Runs `PRAGMA integrity_check` and raises E_RESTORE with SQLite's findings if it is not "ok". */
export function checkIntegrity(db: { pragma(sql: string): unknown }, version: number): void {
  const rows = db.pragma("integrity_check") as { integrity_check: string }[];
  const problems = rows.map((r) => r.integrity_check).filter((m) => m !== "ok");
  if (problems.length > 0) {
    throw new TidemarkError(
      "E_RESTORE",
      `the database rebuilt as of version ${version} fails integrity_check: ${problems.slice(0, 3).join("; ")}`,
      { hint: "run tidemark verify on the backup; restore an earlier version with --version" },
    );
  }
}
