/**
 * Every error tidemark raises on purpose, with a stable string `code`.
 *
 * The codes live in one table so that docs and tests can check them. A message names the
 * component and the operation (`[file] append log-0000000001.tml: ENOSPC`), and a hint says
 * what to do next. The CLI prints them as `Error: …` and `Try: …`.
 */

/** Every error code, with a one-line meaning. docs/operations.md documents each one. */
export const ERROR_CODES = {
  E_INPUT: "a change, a request or a file given to tidemark is malformed",
  E_USAGE: "the command line is wrong (exit code 2)",
  E_CONFIG: "a configuration value is invalid",
  E_GAP: "the change skips versions the backup does not have",
  E_STALE: "the host is behind the backup: it lost committed state",
  E_REWIND: "there is no change that may be rewound",
  E_CONFLICT: "a different change for the same version is already queued or being stored",
  E_CORRUPT: "a stored record, snapshot or document fails its checksum or is malformed",
  E_INCOMPLETE: "the location holds an interrupted copy, not a backup",
  E_KEY: "an encryption key is missing or wrong",
  E_NO_BACKUP: "there is no backup at the given location",
  E_EXISTS: "the target already exists and --force was not given",
  E_LOCKED: "another process holds the backup's writer lock",
  E_RANGE: "the requested version is not held by the backup",
  E_RESTORE: "replaying the backup into SQLite failed",
  E_REPLAY: "a change's statements cannot apply to the backup's state, so it was refused before anything was stored",
  E_BACKEND: "the storage backend failed an operation",
  E_CLOSED: "the backend was used after close(), or written through a read-only one",
  E_NOT_FOUND: "no database with that name is configured",
  E_AUTH: "the request has no API key, or the wrong one",
  E_TOO_LARGE: "the request body exceeds the configured limit",
  E_RATE_LIMIT: "a client asked for downloads or verifies faster than the daemon's rate limit allows",
  E_UNAVAILABLE: "the daemon cannot take the request now (it is shutting down, or unreachable)",
  E_MODE: "a change of the other kind for this backup (SQL into a captured one, pages into a write-ahead one), or a database tidemark watch cannot capture",
  E_NONDETERMINISTIC: "a statement would give a different result when replayed",
  E_INTERRUPTED: "a command was stopped by SIGINT or SIGTERM before it wrote anything (exit code 130)",
  E_INTERNAL: "an unexpected internal error (a bug); the log has the stack trace",
} as const;

/** A stable error code; see {@link ERROR_CODES}. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Options shared by every tidemark error. */
export interface ErrorOptions {
  /** What the user can do about it, printed after `Try:`. */
  hint?: string;
  /** The underlying error, if any. */
  cause?: unknown;
}

/** The base class of every error tidemark raises on purpose. */
export class TidemarkError extends Error {
  /** Stable machine-readable code. */
  readonly code: ErrorCode;
  /** What to do about it. */
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = options.hint;
  }
}

/** Malformed input: a JSON change, a rules file, a request body. */
export class InputError extends TidemarkError {
  constructor(message: string, options: ErrorOptions = {}) {
    super("E_INPUT", message, options);
  }
}

/** A command stopped by SIGINT or SIGTERM; the CLI prints the message alone and exits 130. */
export class InterruptedError extends TidemarkError {
  constructor(dest: string) {
    super("E_INTERRUPTED", `interrupted; nothing was written to ${dest}`);
  }
}

/** A wrong command line. The CLI exits with status 2. */
export class UsageError extends TidemarkError {
  constructor(message: string, options: ErrorOptions = {}) {
    super("E_USAGE", message, options);
  }
}

/** An invalid configuration value; `path` names the field, such as `dbs[0].name`. */
export class ConfigError extends TidemarkError {
  readonly path: string;
  constructor(path: string, message: string, options: ErrorOptions = {}) {
    super("E_CONFIG", path === "" ? message : `${path}: ${message}`, options);
    this.path = path;
  }
}

/**
 * What to do about a gap: send the host's database as a new base at its version. (`tidemark
 * init` refuses a backup that exists; a change with a snapshot is what the version rules take.)
 */
export const GAP_HINT =
  'send the host database as a new base at its current version N: a change with a snapshot (ingest: {"version": N, "snapshot_path": "app.db"}; daemon: POST /v1/dbs/<db>/snapshot?version=N)';

/** A change whose version leaves a hole after the backup head. */
export class GapError extends TidemarkError {
  readonly head: number;
  readonly version: number;
  constructor(head: number, version: number, detail?: string) {
    super(
      "E_GAP",
      detail ??
        `change ${version} does not follow the backup head ${head}: ${version - 1 === head + 1 ? `version ${head + 1} is` : `versions ${head + 1}..${version - 1} are`} missing`,
      { hint: GAP_HINT },
    );
    this.head = head;
    this.version = version;
  }
}

/** A change (or a host at start-up) behind the backup: the host lost committed state. */
export class StaleError extends TidemarkError {
  readonly head: number;
  readonly version: number;
  constructor(head: number, version: number, detail?: string) {
    super(
      "E_STALE",
      detail ?? `change ${version} is behind the backup head ${head}: the host lost committed state`,
      { hint: "restore the host database; do not continue" },
    );
    this.head = head;
    this.version = version;
  }
}

/** Stored bytes that fail a checksum or do not parse; names where they are. */
export class CorruptError extends TidemarkError {
  /** The file or object key. */
  readonly location: string;
  /** Byte offset in the file or object, when known. */
  readonly offset: number | undefined;
  /** The change version, when known. */
  readonly version: number | undefined;
  constructor(
    location: string,
    what: string,
    where: { offset?: number; version?: number } = {},
    options: ErrorOptions = {},
  ) {
    const parts = [location];
    if (where.offset !== undefined) parts.push(`offset ${where.offset}`);
    if (where.version !== undefined) parts.push(`version ${where.version}`);
    super("E_CORRUPT", `${parts.join(", ")}: ${what}`, {
      hint: options.hint ?? "run tidemark verify for a full report; restore from a replica or an older copy",
      cause: options.cause,
    });
    this.location = location;
    this.offset = where.offset;
    this.version = where.version;
  }
}

/** A failed storage operation: names the backend, the operation and the key or file. */
export class BackendError extends TidemarkError {
  readonly backend: string;
  readonly op: string;
  readonly key: string;
  constructor(backend: string, op: string, key: string, detail: string, options: ErrorOptions = {}) {
    super("E_BACKEND", `[${backend}] ${op} ${key}: ${detail}`, options);
    this.backend = backend;
    this.op = op;
    this.key = key;
  }
}

/** Raises `err` as-is if it is a TidemarkError, or wraps it as a BackendError. */
export function asBackendError(backend: string, op: string, key: string, err: unknown): TidemarkError {
  if (err instanceof TidemarkError) return err;
  const e = err as NodeJS.ErrnoException;
  // Node's own message often starts with the code already ("EEXIST: file already exists, …").
  const detail = e?.code && !String(e.message).startsWith(`${e.code}:`) ? `${e.code}: ${e.message}` : String(e?.message ?? err);
  return new BackendError(backend, op, key, detail, { cause: err, hint: hintForErrno(e?.code) });
}

function hintForErrno(code: string | undefined): string | undefined {
  switch (code) {
    case "ENOSPC":
      return "free disk space; nothing acknowledged was lost, retry the change";
    case "EACCES":
    case "EPERM":
      return "check the permissions of the backup directory";
    case "EROFS":
      return "the file system is read-only; remount it or move the backup";
    default:
      return undefined;
  }
}

/** Returns `err` with `prefix: ` before its message (for "line 3: …"); other values pass through. */
export function withContext(err: unknown, prefix: string): unknown {
  if (err instanceof TidemarkError) err.message = `${prefix}: ${err.message}`;
  return err;
}

/** Formats an error for a terminal: `Error: …` plus `Try: …` when there is a hint. */
export function formatError(err: unknown): string {
  if (err instanceof TidemarkError) {
    return err.hint ? `Error: ${err.message}\nTry: ${err.hint}` : `Error: ${err.message}`;
  }
  const e = err as Error;
  return `Error: ${e?.message ?? String(err)}`;
}
