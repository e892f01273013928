/**
 * `backup.lock`: the file in Core Lightning's lightning directory that says where the backup is.
 *
 * The Python backup plugin writes `{"backend_url": "file:///path/backup.dbak"}`. tidemark reads
 * the same file, so an operator switches plugins by changing the plugin path alone, and adds two
 * optional fields to write through a running daemon:
 *
 * ```json
 * {"backend_url": "/var/lib/tidemark/cln"}
 * {"daemon_socket": "/run/tidemark/tidemark.sock", "daemon_db": "cln", "backend_url": "/var/lib/tidemark/data/cln"}
 * ```
 *
 * Relative paths are relative to the lightning directory, where the file lives.
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseLocation } from "../backup/registry.js";
import { ConfigError, TidemarkError } from "../util/errors.js";
import { writeFileDurably } from "../util/durable-fs.js";

/** The lock file's name in the lightning directory. */
const LOCK_FILE = "backup.lock";

/** The daemon database the plugin writes through. */
export interface DaemonTarget {
  /** The daemon's Unix socket, absolute. */
  readonly socket: string;
  /** The database name in the daemon's configuration. */
  readonly db: string;
}

/** A parsed `backup.lock`: straight to a backend, or through a daemon. */
export type BackupLock = DirectLock | DaemonLock;

/** A lock that names the backup, which the plugin opens as its single writer. */
export interface DirectLock {
  /** The lock file itself. */
  readonly file: string;
  /** The tidemark backup: an absolute path, `file:…`, or a backend URL. */
  readonly backendUrl: string;
  readonly daemon?: undefined;
}

/** A lock that names a daemon database to write through. */
export interface DaemonLock {
  /** The lock file itself. */
  readonly file: string;
  /** The daemon database's backend, when known: what `tidemark restore` reads. */
  readonly backendUrl?: string;
  readonly daemon: DaemonTarget;
}

/** What `writeBackupLock` stores. */
export interface BackupLockFields {
  readonly backendUrl?: string;
  readonly daemon?: DaemonTarget;
}

const FIELDS = ["backend_url", "daemon_socket", "daemon_db"];
/** The daemon database used when backup.lock names a socket but no database. */
export const DEFAULT_DAEMON_DB = "default";

/** The path of `backup.lock` in `lightningDir`. */
function lockFile(lightningDir: string): string {
  return path.join(path.resolve(lightningDir), LOCK_FILE);
}

/** Reads and validates `backup.lock` in `lightningDir`. Throws E_NO_BACKUP when it is missing. */
export function readBackupLock(lightningDir: string): BackupLock {
  const file = lockFile(lightningDir);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new TidemarkError("E_NO_BACKUP", `no ${LOCK_FILE} in ${path.dirname(file)}`, {
        hint: `with lightningd stopped, create the backup: tidemark cln init <backup location> --lightning-dir ${path.dirname(file)}`,
      });
    }
    throw new TidemarkError("E_CONFIG", `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ConfigError("", `${file}: invalid JSON: ${(err as Error).message}`);
  }
  return parseBackupLock(value, file);
}

/** Validates the JSON of a lock file; `file` is where it came from and anchors relative paths. */
function parseBackupLock(value: unknown, file: string): BackupLock {
  const field = (name: string, message: string) => new ConfigError(name, `${message} (in ${file})`);
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ConfigError("", `${file}: expected a JSON object such as {"backend_url": "/var/lib/tidemark/cln"}`);
  }
  const raw = value as Record<string, unknown>;
  const unknown = Object.keys(raw).find((k) => !FIELDS.includes(k));
  if (unknown !== undefined) throw field(unknown, `unknown field; expected ${FIELDS.join(", ")}`);
  const dir = path.dirname(file);
  const str = (name: string): string | undefined => {
    const v = raw[name];
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v === "") throw field(name, "expected a non-empty string");
    return v;
  };
  const backendUrl = str("backend_url");
  const socket = str("daemon_socket");
  const db = str("daemon_db");
  if (db !== undefined && socket === undefined) throw field("daemon_db", "needs daemon_socket");
  const location = backendUrl === undefined ? undefined : resolveLocation(backendUrl, dir);
  if (socket !== undefined) {
    return { file, ...(location !== undefined && { backendUrl: location }), daemon: { socket: path.resolve(dir, socket), db: db ?? DEFAULT_DAEMON_DB } };
  }
  if (location === undefined) {
    throw field("backend_url", "missing: backup.lock must name the backup (backend_url) or a daemon (daemon_socket)");
  }
  return { file, backendUrl: location };
}

/**
 * Writes `backup.lock` durably (temp file, fsync, rename). Refuses an existing one unless
 * `force`; `assertLockWritable` checks the same up front.
 */
export function writeBackupLock(lightningDir: string, fields: BackupLockFields, force: boolean): string {
  assertLockWritable(lightningDir, force);
  const file = lockFile(lightningDir);
  const json: Record<string, string> = {};
  if (fields.backendUrl !== undefined) json.backend_url = fields.backendUrl;
  if (fields.daemon) {
    json.daemon_socket = fields.daemon.socket;
    json.daemon_db = fields.daemon.db;
  }
  writeFileDurably(file, Buffer.from(`${JSON.stringify(json)}\n`));
  return file;
}

/** Throws E_EXISTS if `backup.lock` exists and `force` is not set; E_INPUT if the directory does not exist. */
export function assertLockWritable(lightningDir: string, force: boolean): void {
  const dir = path.resolve(lightningDir);
  if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new TidemarkError("E_INPUT", `the lightning directory ${dir} does not exist`, {
      hint: "give the network directory that holds lightningd.sqlite3, such as ~/.lightning/bitcoin",
    });
  }
  const file = lockFile(dir);
  if (force || !fs.existsSync(file)) return;
  throw new TidemarkError("E_EXISTS", `${file} already exists: this node already has a backup configured`, {
    hint: "keep it; or, with lightningd stopped, add --force to point the node at the new backup",
  });
}

/**
 * The file a location names when it is a local path (`/p`, `file:p`, `file:///p`), or null for
 * other URLs. Relative paths are taken from `base`.
 */
export function localPathOf(location: string, base: string): string | null {
  const url = parseLocation(resolveLocation(location, base));
  return url.protocol === "file:" ? fileURLToPath(url) : null;
}

/** Makes a relative path in a location absolute against `base`; URLs pass through. */
export function resolveLocation(location: string, base: string): string {
  if (/^file:(?!\/\/)/i.test(location)) return `file:${path.resolve(base, location.slice("file:".length))}`;
  if (/^[a-zA-Z][a-zA-Z0-9+.-]+:/.test(location)) return location;
  return path.resolve(base, location);
}

/**
 * Throws E_EXISTS unless `backup.lock` is absent, already names `file` (the backup being
 * replaced, as after an import of the file it names), or `force` is set.
 */
export function assertLockReplaceable(lightningDir: string, file: string, force: boolean): void {
  assertLockWritable(lightningDir, true);
  if (force || !fs.existsSync(lockFile(lightningDir))) return;
  const lock = readBackupLock(lightningDir);
  const named = lock.backendUrl === undefined ? null : localPathOf(lock.backendUrl, path.dirname(lock.file));
  if (named !== null && sameFile(named, file)) return;
  throw new TidemarkError("E_EXISTS", `${lock.file} names ${lock.daemon ? "a daemon database" : lock.backendUrl}, not ${file}`, {
    hint: "add --force to point the node at the imported backup anyway, or leave out --lightning-dir",
  });
}

function sameFile(a: string, b: string): boolean {
  const sa = fs.statSync(a, { throwIfNoEntry: false });
  const sb = fs.statSync(b, { throwIfNoEntry: false });
  return sa !== undefined && sb !== undefined && sa.dev === sb.dev && sa.ino === sb.ino;
}
