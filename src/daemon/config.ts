/**
 * The daemon's configuration: defaults, then parse (JSON or YAML, with `${ENV}` expansion for
 * secrets), then validate against a schema (errors name the field path and the bad value),
 * then freeze.
 */
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";
import { z } from "zod";
import { COMPRESSION_NAMES, type CompressionName } from "../format/sealing.js";
import { parseDuration, isDuration } from "../util/duration.js";
import { ConfigError } from "../util/errors.js";
import type { KeySource } from "../format/keyring.js";
import type { RetentionPolicy } from "../model/retention.js";
import type { RateLimit } from "./rate-limit.js";
import { resolveGroup, type AccessGroup } from "./access-group.js";

/** A database name: lowercase letters, digits, `_` and `-`; never used as a path unchecked. */
export const DB_NAME_RE = /^[a-z0-9_-]{1,64}$/;
/** Names that would clash with the daemon's own entries in shared directories. */
const RESERVED_NAMES = new Set(["rejected"]);

/** Fields whose values are secrets: never echoed in errors or logs. */
const SECRET_KEYS = new Set(["apiKey"]);

const duration = z.union([z.number().positive(), z.string().refine(isDuration, "expected a duration like 30s, 15m, 6h, 1d or 1h30m")]);
const size = z.union([z.number().int().positive(), z.string().regex(/^\d+\s*(B|KiB|MiB|GiB)$/, "expected a size like 512KiB, 16MiB or 1GiB")]);

const compactionSchema = z.strictObject({
  /** Compact after this many changes since the last compaction. */
  everyChanges: z.number().int().positive().optional(),
  /** Compact at least this often (a duration). */
  every: duration.optional(),
  /** Compact when the log's bytes exceed this many times the base snapshot's bytes. */
  logRatio: z.number().positive().optional(),
});

const databaseSchema = z.strictObject({
  name: z
    .string()
    .regex(DB_NAME_RE, "expected 1 to 64 of a-z, 0-9, _ and -")
    .refine((n) => !RESERVED_NAMES.has(n), "this name is reserved"),
  backend: z.string().min(1, "expected a backend location"),
  replicas: z.array(z.string().min(1, "expected a backend location")).default([]),
  /** A WAL-mode SQLite file to capture (tidemark watch), instead of changes sent by a host. */
  watch: z.string().min(1, "expected the path of a SQLite database").optional(),
  create: z.boolean().default(true),
  /** The host's database file: restored from the backup at start, before serving, when it is missing. */
  restoreIfMissing: z.string().min(1).optional(),
  rules: z.string().min(1).default("none"),
  /** Accept SQL that reads the clock or random numbers; default: only with rules "core-lightning". */
  allowNondeterministic: z.boolean().optional(),
  compaction: compactionSchema.default({ everyChanges: 100_000, every: "6h", logRatio: 4 }),
  retention: z
    .strictObject({ bases: z.number().int().min(0).optional(), for: z.union([z.literal(0), duration]).optional() })
    .optional(),
  validationInterval: duration.optional(),
  /** The least time between two writes to each replica (a duration; default 1s). */
  replicaInterval: duration.optional(),
  compression: z.enum(COMPRESSION_NAMES).optional(),
  brotliQuality: z.number().int().min(0).max(11).optional(),
  encryption: z
    .strictObject({
      keys: z
        .array(
          z.strictObject({
            id: z.number().int().min(1).max(0xffffffff),
            source: z.string().regex(/^(file|env):.+/, "expected file:PATH or env:NAME; a key never goes in the configuration itself"),
            decryptOnly: z.boolean().default(false),
          }),
        )
        .min(1, "expected at least one key"),
    })
    .optional(),
});

const configSchema = z.strictObject({
  socket: z.string().min(1).default("./tidemark.sock"),
  tcp: z
    .strictObject({
      host: z.string().min(1).default("127.0.0.1"),
      port: z.number().int().min(0).max(65535),
      apiKey: z.string().optional(),
    })
    .optional(),
  spool: z.string().min(1).optional(),
  /** A group (name or number) that may use the socket and the spool (access-group.ts). */
  group: z.union([z.string().min(1), z.number().int().min(0)]).optional(),
  /** A listener that serves only GET /metrics, without the API key, for Prometheus. */
  metrics: z
    .strictObject({
      listen: z.union([
        z.number().int().min(0).max(65535),
        z.string().regex(/^(?:(\[[0-9a-fA-F:.]+\]|[^:\s]+):)?\d{1,5}$/, 'expected "PORT" or "HOST:PORT", like "127.0.0.1:9090"'),
      ]),
    })
    .optional(),
  maxChangeBytes: size.default("16MiB"),
  groupCommit: z.enum(["auto", "on", "off"]).default("auto"),
  tmpDir: z.string().min(1).optional(),
  /** Where the databases' shadows live (ops/shadow.ts); its default otherwise. */
  shadowDir: z.string().min(1).optional(),
  /** Backup downloads and verify-now, per client: a burst, then one per `every`. */
  rateLimit: z
    .strictObject({ burst: z.number().int().min(0).default(5), every: duration.default("1m") })
    .default({ burst: 5, every: "1m" }),
  log: z
    .strictObject({
      level: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
      /** json lines (the default), or one readable line per entry. */
      format: z.enum(["json", "text"]).default("json"),
    })
    .default({ level: "info", format: "json" }),
  databases: z.array(databaseSchema).min(1, "expected at least one database"),
});

export type { CompactionPolicy } from "../model/compaction-policy.js";
import type { CompactionPolicy } from "../model/compaction-policy.js";

/** One database the daemon serves. */
export interface DatabaseConfig {
  readonly name: string;
  /** Primary backend location: a resolved path or a URL. */
  readonly backend: string;
  /** Replica backend locations, fed asynchronously from the primary. */
  readonly replicas: readonly string[];
  /** A WAL-mode database to capture into a captured backup, instead of the ingest doors. */
  readonly watch?: string;
  /** Create the backup if it does not exist yet. */
  readonly create: boolean;
  /** The host's database file (absolute): restored at start, before serving, when it does not exist. */
  readonly restoreIfMissing?: string;
  /** A rule set name or a rules file path. */
  readonly rules: string;
  /**
   * Accept SQL that reads the clock or random numbers (E_NONDETERMINISTIC otherwise). Default:
   * true with rules "core-lightning" (lightningd's own migrations do it), false otherwise.
   */
  readonly allowNondeterministic: boolean;
  readonly compaction: CompactionPolicy;
  /** How often to run verify with a test restore (ms); never when absent. */
  readonly validationMs?: number;
  /** The least time between two writes to each replica (ms); 1 s when absent. */
  readonly replicaIntervalMs?: number;
  /** How much history compaction keeps (the backup's own setting when absent). */
  readonly retention?: RetentionPolicy;
  /** How new records and snapshots are compressed (the backup's own setting when absent). */
  readonly compression?: CompressionName;
  readonly brotliQuality?: number;
  /** Where the encryption keys come from; the keys themselves never live in the config. */
  readonly keys: readonly KeySource[];
}

/** The validated, frozen configuration. */
export interface Config {
  /** Absolute path of the Unix socket. */
  readonly socket: string;
  readonly tcp?: { readonly host: string; readonly port: number; readonly apiKey: string };
  /** Absolute path of the spool directory, if any. */
  readonly spool?: string;
  /** The group given the socket (0660) and the spool (2770); without it both are private. */
  readonly group?: AccessGroup;
  /** The metrics-only listener, if any (loopback unless a host is given). */
  readonly metrics?: { readonly host: string; readonly port: number };
  readonly maxChangeBytes: number;
  /** Overlap the flushes of several databases: "auto" does when more than one is configured. */
  readonly groupCommit: "auto" | "on" | "off";
  readonly tmpDir?: string;
  /** Absolute path of the shadow databases' directory; ops/shadow.ts's default when absent. */
  readonly shadowDir?: string;
  /** The token bucket each client gets for downloads and verify-now (burst 0: no limit). */
  readonly rateLimit: RateLimit;
  readonly log: { readonly level: string; readonly format: "json" | "text" };
  readonly databases: readonly DatabaseConfig[];
  /** Where the configuration came from: a file path, or "embedded default". */
  readonly source: string;
}

/** The configuration used when `tidemark daemon` runs without --config. */
export const EMBEDDED_DEFAULT = {
  socket: "./tidemark.sock",
  spool: "./tidemark-spool",
  databases: [{ name: "default", backend: "./tidemark-data/default" }],
};

/** Loads, validates and freezes a configuration file (JSON or YAML). */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError("", `cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      hint: "check the --config path",
    });
  }
  let raw: unknown;
  try {
    raw = file.endsWith(".json") ? JSON.parse(text) : YAML.parse(text, { prettyErrors: true });
  } catch (err) {
    throw parseError(file, text, err);
  }
  return buildConfig(raw, path.dirname(path.resolve(file)), path.resolve(file), env);
}

/** A parse error that names the line and column, and shows the line (YAML's or JSON's own position). */
function parseError(file: string, text: string, err: unknown): ConfigError {
  const message = (err as Error).message ?? String(err);
  let at: { line: number; col: number } | undefined;
  let reason = message.split("\n")[0]!;
  if (err instanceof YAML.YAMLParseError && err.linePos) {
    at = err.linePos[0];
    reason = reason.replace(/ at line \d+, column \d+:?$/, "");
  } else {
    const pos = /at position (\d+)/.exec(message);
    if (pos) {
      const before = text.slice(0, Number(pos[1])).split("\n");
      at = { line: before.length, col: before.at(-1)!.length + 1 };
      reason = reason.replace(/ in JSON at position \d+.*$/, "");
    }
  }
  if (!at) return new ConfigError("", `config file ${file} does not parse: ${reason}`);
  const shown = (text.split("\n")[at.line - 1] ?? "").slice(0, 120);
  return new ConfigError("", `config file ${file} does not parse at line ${at.line}, column ${at.col}: ${reason}`, {
    hint: `check line ${at.line} (${JSON.stringify(shown)}) and the line before it${file.endsWith(".json") ? "" : "; YAML nests by indentation, with spaces"}`,
  });
}

/** The embedded default, with paths relative to `cwd`. */
export function defaultConfig(cwd = process.cwd()): Config {
  return buildConfig(EMBEDDED_DEFAULT, cwd, "embedded default", process.env);
}

/**
 * Validates a parsed configuration. Relative paths are resolved against `baseDir` (the config
 * file's directory); `${NAME}` in any string is replaced by the environment variable NAME.
 */
export function buildConfig(raw: unknown, baseDir: string, source: string, env: NodeJS.ProcessEnv = process.env): Config {
  const expanded = expandEnv(raw, [], env);
  const result = configSchema.safeParse(expanded);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const at = issue.code === "unrecognized_keys" ? [...issue.path, issue.keys[0]!] : issue.path;
    const where = formatPath(at);
    const message =
      issue.code === "unrecognized_keys" ? `unknown field "${issue.keys[0]}"` : `${issue.message}${describeValue(expanded, issue.path)}`;
    throw new ConfigError(where, message, { hint: `fix ${where || "the file"} in ${source}` });
  }
  const c = result.data;
  const resolvePath = (p: string) => path.resolve(baseDir, p);
  const names = new Set<string>();
  const locations = new Map<string, string>();
  c.databases.forEach((db, i) => {
    const active = db.encryption?.keys.filter((k) => !k.decryptOnly) ?? [];
    if (active.length > 1) throw new ConfigError(`databases[${i}].encryption.keys`, "only one key may be active; mark the others decryptOnly: true");
    if (names.has(db.name)) throw new ConfigError(`databases[${i}].name`, `"${db.name}" is used twice`);
    names.add(db.name);
    [db.backend, ...db.replicas].forEach((loc, j) => {
      const where = j === 0 ? `databases[${i}].backend` : `databases[${i}].replicas[${j - 1}]`;
      const key = resolveLocation(loc, baseDir);
      const other = locations.get(key);
      if (other) throw new ConfigError(where, `${key} is already used by ${other}; every backup needs its own location`);
      locations.set(key, where);
    });
  });
  if (c.tcp && !c.tcp.apiKey) {
    throw new ConfigError("tcp.apiKey", "TCP is enabled but no API key is set; refusing to serve TCP without one", {
      hint: "set tcp.apiKey (for example apiKey: ${TIDEMARK_API_KEY}) or remove the tcp section",
    });
  }
  const config: Config = {
    socket: resolvePath(c.socket),
    ...(c.tcp && { tcp: { host: c.tcp.host, port: c.tcp.port, apiKey: c.tcp.apiKey! } }),
    ...(c.spool !== undefined && { spool: resolvePath(c.spool) }),
    ...(c.group !== undefined && { group: resolveGroup(c.group, "group") }),
    ...(c.metrics && { metrics: parseListen(c.metrics.listen) }),
    maxChangeBytes: parseSize(c.maxChangeBytes),
    groupCommit: c.groupCommit,
    ...(c.tmpDir !== undefined && { tmpDir: resolvePath(c.tmpDir) }),
    ...(c.shadowDir !== undefined && { shadowDir: resolvePath(c.shadowDir) }),
    rateLimit: { burst: c.rateLimit.burst, everyMs: durationMs(c.rateLimit.every) },
    log: { level: c.log.level, format: c.log.format },
    databases: c.databases.map((db) => ({
      name: db.name,
      backend: resolveLocation(db.backend, baseDir),
      replicas: db.replicas.map((r) => resolveLocation(r, baseDir)),
      ...(db.watch !== undefined && { watch: resolvePath(db.watch) }),
      create: db.create,
      ...(db.restoreIfMissing !== undefined && { restoreIfMissing: resolvePath(db.restoreIfMissing) }),
      rules: db.rules in { none: 1, "core-lightning": 1 } ? db.rules : resolvePath(db.rules),
      allowNondeterministic: db.allowNondeterministic ?? db.rules === "core-lightning",
      ...(db.retention && {
        retention: {
          ...(db.retention.bases !== undefined && { bases: db.retention.bases }),
          ...(db.retention.for !== undefined && { maxAgeMs: durationMs(db.retention.for) }),
        },
      }),
      ...(db.validationInterval !== undefined && { validationMs: durationMs(db.validationInterval) }),
      ...(db.replicaInterval !== undefined && { replicaIntervalMs: durationMs(db.replicaInterval) }),
      ...(db.compression !== undefined && { compression: db.compression }),
      ...(db.brotliQuality !== undefined && { brotliQuality: db.brotliQuality }),
      keys: (db.encryption?.keys ?? []).map((k) => ({
        id: k.id,
        source: k.source.startsWith("file:") ? `file:${path.resolve(baseDir, k.source.slice("file:".length))}` : k.source,
        decryptOnly: k.decryptOnly,
      })),
      compaction: {
        ...(db.compaction.everyChanges !== undefined && { everyChanges: db.compaction.everyChanges }),
        ...(db.compaction.every !== undefined && { everyMs: durationMs(db.compaction.every) }),
        ...(db.compaction.logRatio !== undefined && { logRatio: db.compaction.logRatio }),
      },
    })),
    source,
  };
  return deepFreeze(config);
}

/** A backend location with a relative path made absolute; URLs pass through. */
function resolveLocation(location: string, baseDir: string): string {
  return /^[a-zA-Z][a-zA-Z0-9+.-]+:/.test(location) && !location.startsWith("file:") ? location : resolveFileLocation(location, baseDir);
}

function resolveFileLocation(location: string, baseDir: string): string {
  if (location.startsWith("file://")) return location;
  const p = location.startsWith("file:") ? location.slice("file:".length) : location;
  return path.resolve(baseDir, p);
}

/** Replaces `${NAME}` in every string with the environment variable NAME. */
function expandEnv(value: unknown, at: (string | number)[], env: NodeJS.ProcessEnv): unknown {
  if (typeof value === "string") {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name: string) => {
      const v = env[name];
      if (v === undefined) {
        throw new ConfigError(formatPath(at), `environment variable ${name} is not set`, { hint: `export ${name}=… before starting tidemark` });
      }
      return v;
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => expandEnv(v, [...at, i], env));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expandEnv(v, [...at, k], env)]));
  }
  return value;
}

function formatPath(at: readonly PropertyKey[]): string {
  return at.map((p, i) => (typeof p === "number" ? `[${p}]` : `${i === 0 ? "" : "."}${String(p)}`)).join("");
}

/** ", got <value>" for an error message, unless the field is a secret. */
function describeValue(root: unknown, at: readonly PropertyKey[]): string {
  let v: unknown = root;
  for (const p of at) {
    if (v === null || typeof v !== "object") return "";
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  if (at.some((p) => SECRET_KEYS.has(String(p)))) return "";
  if (v === undefined) return "";
  const text = JSON.stringify(v);
  return `, got ${text.length > 60 ? `${text.slice(0, 60)}…` : text}`;
}

/** Converts a configured duration (a duration string, or a number of seconds) into milliseconds. */
function durationMs(v: string | number): number {
  return typeof v === "number" ? v * 1000 : parseDuration(v);
}

/** Parses `PORT`, `HOST:PORT` or `[IPv6]:PORT`; the host is 127.0.0.1 when not given. */
function parseListen(listen: string | number): { host: string; port: number } {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:\s]+):)?(\d{1,5})$/.exec(String(listen))!;
  const port = Number(m[2]);
  if (port > 65535) throw new ConfigError("metrics.listen", `port ${port} is out of range`);
  return { host: m[1] === undefined ? "127.0.0.1" : m[1].replace(/^\[|\]$/g, ""), port };
}

/** Parses a size (`512KiB`, `16MiB`, or a number of bytes) into bytes. */
export function parseSize(v: string | number): number {
  if (typeof v === "number") return v;
  const m = /^(\d+)\s*(B|KiB|MiB|GiB)$/.exec(v)!;
  return Number(m[1]) * { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[m[2] as "B" | "KiB" | "MiB" | "GiB"];
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
