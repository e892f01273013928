/**
 * Helpers shared by the CLI commands.
 *
 * Every command module is loaded to build the program for --help (a command line that names a
 * command loads only that one), so a command module imports at its top only commander, this
 * file and small util/ modules; what its action runs (the backup core, ops/, the daemon,
 * better-sqlite3, undici, …) it loads with `import()` when it runs.
 * test/commands/cli-imports.test.ts checks which modules each command loads.
 */
import { InvalidArgumentError, Option, type Command } from "commander";
import type { Backend, BackendOptions, OpenMode } from "../backup/backup.js";
import { COMPRESSION_NAMES, type CompressionName } from "../format/sealing.js";
import { Keyring, parseKeySpec, type KeySource } from "../format/keyring.js";
import { parseDuration } from "../util/duration.js";
import { terminalLogger } from "../util/logger.js";
import { TidemarkError } from "../util/errors.js";

/** Opens the backend at `location`, runs `fn`, and always closes it. */
export async function withBackend<T>(
  location: string,
  mode: OpenMode,
  fn: (backend: Backend) => Promise<T>,
  options: Omit<BackendOptions, "mode"> = {},
): Promise<T> {
  const { openBackend } = await import("../backup/registry.js");
  const backend = await openBackend(location, { log: terminalLogger(), ...options, mode });
  try {
    return await fn(backend);
  } finally {
    await backend.close();
  }
}

/**
 * Runs `fn`; a backup locked by another writer (most often the daemon that serves it) is
 * refused with a hint to ask that daemon for `endpoint` instead of stopping it.
 */
export async function viaDaemonWhenLocked<T>(endpoint: "compact" | "rewind", fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (!(err instanceof TidemarkError) || err.code !== "E_LOCKED") throw err;
    throw new TidemarkError("E_LOCKED", err.message, {
      hint:
        `if the writer is the tidemark daemon, ask it: curl -X POST --unix-socket <socket> http://tidemark/v1/dbs/<db>/${endpoint}` +
        (err.hint ? `; otherwise: ${err.hint}` : ""),
      cause: err,
    });
  }
}

/** Parses a version argument: an integer >= 1. */
export function parseVersion(value: string): number {
  if (!/^[0-9]+$/.test(value)) throw new InvalidArgumentError("expected an integer >= 1.");
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected an integer >= 1.");
  return n;
}

/** Formats a byte count for people. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Formats milliseconds for people. */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** Formats a duration for people and flags (one implementation, in util/duration.ts). */
export { formatDuration } from "../util/duration.js";

/** Prints a JSON document on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Formats per-rule rewrite counts, or "" when there were none. */
export function formatRewrites(counts: Record<string, number>): string {
  const used = Object.entries(counts);
  if (used.length === 0) return "";
  return `rewrites: ${used.map(([name, n]) => `${name}=${n}`).join(", ")}`;
}

/** The encryption and compression flags, as commander parses them. */
export interface CodecFlags {
  key?: string;
  decryptKey?: string[];
  compression?: CompressionName;
  brotliQuality?: number;
}

/**
 * Adds --key and --decrypt-key to a command, and for commands that write, --compression and
 * --brotli-quality. The environment variables TIDEMARK_KEY and TIDEMARK_DECRYPT_KEYS (comma
 * separated) stand in for the key flags.
 */
export function addCodecOptions(cmd: Command, writes: boolean): Command {
  cmd
    .option("--key <id=source>", `the current encryption key${writes ? " (new writes use it)" : ""}: ID=file:PATH or ID=env:NAME (or $TIDEMARK_KEY)`)
    .option("--decrypt-key <id=source>", "an older key, only to read what it encrypted; repeatable (or $TIDEMARK_DECRYPT_KEYS)", (v: string, all: string[] = []) => [...all, v]);
  if (writes) {
    cmd
      .addOption(new Option("--compression <codec>", "compress new records and snapshots (default: the backup's setting)").choices(COMPRESSION_NAMES))
      .option("--brotli-quality <n>", "brotli quality 0..11 (default 1; 11 is about 1 MB/s)", parseQuality);
  }
  return cmd;
}

/** Backend options from the codec flags and their environment variables. */
export function codecOptions(flags: CodecFlags, env: NodeJS.ProcessEnv = process.env): Omit<BackendOptions, "mode"> {
  const sources: KeySource[] = [];
  const active = flags.key ?? env.TIDEMARK_KEY;
  if (active) sources.push(parseKeySpec(active, false));
  const older = flags.decryptKey ?? (env.TIDEMARK_DECRYPT_KEYS ? env.TIDEMARK_DECRYPT_KEYS.split(",").map((x) => x.trim()).filter(Boolean) : []);
  for (const spec of older) sources.push(parseKeySpec(spec, true));
  return {
    ...(sources.length > 0 && { keyring: Keyring.load(sources, "--key", env) }),
    ...(flags.compression && { compression: flags.compression }),
    ...(flags.brotliQuality !== undefined && { brotliQuality: flags.brotliQuality }),
  };
}

function parseQuality(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 11) throw new InvalidArgumentError("expected an integer from 0 to 11.");
  return n;
}

/** The retention flags, as commander parses them. */
export interface RetentionFlags {
  keepBases?: number;
  keepFor?: number;
}

/** Adds --keep-bases and --keep-for to a command that compacts (or creates) a backup. */
export function addRetentionOptions(cmd: Command): Command {
  return cmd
    .option("--keep-bases <n>", "keep this many older bases (with their changes) for restores of older versions; becomes the backup's setting", parseCount)
    .option(
      "--keep-for <duration>",
      "keep what restores to any moment of this long ago need (30s, 15m, 6h, 7d; default 24h); 0 keeps the live generation only; becomes the backup's setting",
      parseKeepFor,
    );
}

/** Backend options from the retention flags (none when neither was given: the backup's own setting applies). */
export function retentionOptions(flags: RetentionFlags): Omit<BackendOptions, "mode"> {
  if (flags.keepBases === undefined && flags.keepFor === undefined) return {};
  return {
    retention: {
      ...(flags.keepBases !== undefined && { bases: flags.keepBases }),
      ...(flags.keepFor !== undefined && { maxAgeMs: flags.keepFor }),
    },
  };
}

function parseCount(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError("expected a whole number.");
  return Number(value);
}

function parseKeepFor(value: string): number {
  return value === "0" ? 0 : parseDurationFlag(value);
}

function parseDurationFlag(value: string): number {
  try {
    return parseDuration(value);
  } catch {
    // commander words the error itself ("option '--keep-for <duration>' argument '…' is invalid.") from this class.
    throw new InvalidArgumentError("expected a duration like 30s, 15m, 6h, 7d or 1h30m.");
  }
}

/** Parses --time: an ISO-8601 moment. */
export function parseTime(value: string): number {
  const ms = Date.parse(value);
  if (!/^\d{4}-\d{2}-\d{2}/.test(value) || Number.isNaN(ms)) throw new InvalidArgumentError("expected an ISO-8601 time, like 2026-11-22T03:00:00Z.");
  return ms;
}
