/**
 * Restore: rebuilds the database from a backup into a new file, all or nothing.
 *
 * It replays into a temp file beside `dest`, runs `PRAGMA integrity_check`, fsyncs, renames
 * into place and fsyncs the directory. An existing `dest` is refused unless `force` is set.
 */
import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import type { Backend } from "../backup/backup.js";
import { InputError, TidemarkError } from "../util/errors.js";
import { refuseDamagedHead, versionAt } from "./point-in-time.js";
import { replayInto } from "./replay.js";
import { Rewriter, type Rule } from "./rewrite.js";
import { fsyncDir, fsyncFile, removeDatabaseFiles } from "../util/durable-fs.js";
import { isProcessAlive } from "../util/pid.js";

/** Options for {@link restore}. */
export interface RestoreOptions {
  /** Restore as of this version; defaults to the head. */
  readonly version?: number;
  /** Restore as of this moment (ms since the epoch) instead: the last change made by then. */
  readonly time?: number;
  /** Rewrite rules applied to every statement. */
  readonly rules?: readonly Rule[];
  /** Replace an existing `dest` (and its -wal, -shm and -journal files). */
  readonly force?: boolean;
  /** Progress callback: versions done, versions in all. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Called as each phase starts: "reading", "replaying", "checking integrity", "syncing". */
  readonly onPhase?: (phase: RestorePhase) => void;
  /** Stops the restore: nothing appears at `dest`, the temp files go, and it rejects with the reason. */
  readonly signal?: AbortSignal;
  /**
   * Lets a short restore (up to 20,000 changes, or a captured backup) run SQLite on this thread
   * instead of starting a worker, which costs more than such a restore. It then blocks this
   * thread for a batch of statements at a time: the CLI allows it, a daemon (which must keep
   * acknowledging) does not.
   */
  readonly inline?: boolean;
}

/** The phases of a restore, in order. */
export type RestorePhase = "reading" | "replaying" | "checking integrity" | "syncing";

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
  removeStaleTemps(target);
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.tidemark-${process.pid}-${randomBytes(4).toString("hex")}.tmp`);
  const rewriter = new Rewriter(options.rules ?? []);
  options.onPhase?.("reading");
  const version = options.time !== undefined ? await versionAt(backend, options.time) : options.version;
  if (version === undefined) refuseDamagedHead(await backend.status(), "its head");
  try {
    let replaying = false;
    const replayed = await replayInto(backend, tmp, {
      ...(version !== undefined && { to: version }),
      rewriter,
      ...(options.inline && { inline: true }),
      onProgress: (done, total) => {
        if (!replaying) options.onPhase?.("replaying");
        replaying = true;
        options.onProgress?.(done, total);
      },
      ...(options.signal && { signal: options.signal }),
    });
    try {
      options.signal?.throwIfAborted();
      options.onPhase?.("checking integrity");
      checkIntegrity(await replayed.db.integrityCheck(), replayed.version);
    } finally {
      await replayed.db.close();
    }
    options.onPhase?.("syncing");
    fsyncFile(tmp);
    // The last moment to stop: after the rename, the restore is whole and stays.
    options.signal?.throwIfAborted();
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

/** Removes temp files that an earlier restore to the same path left when it was killed. */
function removeStaleTemps(target: string): void {
  const prefix = `.${path.basename(target)}.tidemark-`;
  const dir = path.dirname(target);
  for (const name of fs.readdirSync(dir)) {
    if (!name.startsWith(prefix)) continue;
    const m = /^(\d+)-[0-9a-f]{8}\.tmp(?:-wal|-shm|-journal)?$/.exec(name.slice(prefix.length));
    if (m && !isProcessAlive(Number(m[1]))) fs.rmSync(path.join(dir, name), { force: true });
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

/** Raises E_RESTORE with SQLite's findings if `PRAGMA integrity_check` said anything but "ok". */
export function checkIntegrity(findings: readonly string[], version: number): void {
  const problems = findings.filter((m) => m !== "ok");
  if (problems.length > 0) {
    throw new TidemarkError(
      "E_RESTORE",
      `the database rebuilt as of version ${version} fails integrity_check: ${problems.slice(0, 3).join("; ")}`,
      { hint: "run tidemark verify on the backup; restore an earlier version with --version" },
    );
  }
}
