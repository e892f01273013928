/**
 * `tidemark status <backend> [--json]` and `tidemark status --socket PATH [--db NAME]`
 */
import type { Command } from "commander";
import type { Backend, BackendStatus } from "../backup/backup.js";
import type { DatabaseStatus } from "../daemon/managed-database.js";
import { UsageError } from "../util/errors.js";
import { DEFAULT_RETENTION } from "../model/retention.js";
import { versionRange } from "../util/plural.js";
import { addCodecOptions, codecOptions, formatBytes, formatDuration, printJson, withBackend, type CodecFlags } from "./common.js";

interface StatusOptions extends CodecFlags {
  json?: boolean;
  watch?: string;
  socket?: string;
  db?: string;
}

/** Registers the command. */
export function registerStatus(program: Command): void {
  const cmd = program
    .command("status")
    .summary("show a backup's head, base and size (or a daemon's databases)")
    .description(
      "Show the head version, the version a rewind returns to, the base snapshot, the versions a restore\n" +
        "can target, the record count and the bytes stored. Read-only: safe while a writer runs.\n" +
        "A backup with damage its head needs (in its live log or live base snapshot) is shown up to the\n" +
        "damage, and the command exits 1; damage in an older generation is marked, and it exits 0.\n" +
        "With --socket, ask a running daemon instead: every database (or --db NAME), with its last\n" +
        "compaction, recent errors, and each replica's lag in versions and seconds.",
    )
    .argument("[backend]", "the backup: a directory path, file:PATH, or a backend URL")
    .option("--socket <path>", "ask the daemon listening on this Unix socket")
    .option("--db <name>", "with --socket: only this database")
    .option("--watch <db>", "a captured backup: also show how far it is behind this database's WAL, and the WAL's size")
    .option("--json", "print JSON instead of text")
    .addHelpText("after", "\nExamples:\n  tidemark status ./backup\n  tidemark status --socket ./tidemark.sock --db default");
  addCodecOptions(cmd, false);
  cmd
    .action(async (location: string | undefined, opts: StatusOptions) => {
      if (opts.socket) {
        if (location) throw new UsageError("give a backend or --socket, not both");
        return daemonStatus(opts.socket, opts);
      }
      if (!location) throw new UsageError("missing the backend (or --socket)", { hint: "tidemark status ./backup" });
      const { refuseDamagedHead } = await import("../ops/point-in-time.js");
      await withBackend(location, "read", async (backend) => {
        const s = await backend.status({ checkBase: true });
        const lag = opts.watch === undefined ? undefined : await captureLag(backend, s, opts.watch);
        if (opts.json) printJson({ location: backend.location, ...s, ...(lag && { capture: lag }) });
        else print([...describe(`${backend.location} (${backend.kind})`, s), ...(lag ? [describeLag(lag)] : [])]);
        // A damaged backup is shown, then reported as the error it is.
        refuseDamagedHead(s, "its head");
      }, codecOptions(opts));
    });
}

async function daemonStatus(socket: string, opts: StatusOptions): Promise<void> {
  const { connect } = await import("../host/client.js");
  const client = connect({ socket, attempts: 1, ...(opts.db && { db: opts.db }) });
  try {
    const all: DatabaseStatus[] = opts.db ? [await client.status()] : (await client.list()).databases;
    if (opts.json) return printJson(opts.db ? all[0] : all);
    all.forEach((s, i) => {
      if (i > 0) process.stdout.write("\n");
      const lines = describe(`${s.name}: ${s.backend} (${s.kind})`, s);
      if (s.lastCompaction) lines.push(["compacted", `${s.lastCompaction.at}, base ${s.lastCompaction.baseVersion}, ${s.lastCompaction.reason}`]);
      for (const r of s.replicas) {
        const state = r.error ? `failing: ${r.error.message}` : "ok";
        lines.push(["replica", `${r.location}: version ${r.version}, ${r.lagVersions} behind (${r.lagSeconds.toFixed(1)} s), ${state}`]);
      }
      for (const e of s.errors.slice(-3)) lines.push(["error", `${e.at} ${e.code}: ${e.message}`]);
      print(lines);
    });
  } finally {
    client.close();
  }
}

/** How far a captured backup is behind its database, from the WAL position its head recorded. */
async function captureLag(backend: Backend, s: BackendStatus, db: string): Promise<CaptureLag> {
  if (s.settings?.capture !== true) throw new UsageError(`--watch applies to captured backups; ${backend.location} is a write-ahead backup`);
  const { headPosition, walLag } = await import("../ops/capture.js");
  const { transactions, walBytes } = walLag(db, s.version === 0 ? null : await headPosition(backend));
  const behind = transactions === null || transactions > 0;
  return { db, head: s.version, lagTransactions: transactions, lagSeconds: behind && s.headTimestamp !== undefined ? Math.max(0, Date.now() - s.headTimestamp) / 1000 : 0, walBytes };
}

interface CaptureLag {
  readonly db: string;
  readonly head: number;
  /** Commits in the WAL after the head's position; null when the WAL no longer holds it. */
  readonly lagTransactions: number | null;
  /** At most this long behind (the head's age when anything is pending). */
  readonly lagSeconds: number;
  readonly walBytes: number;
}

function describeLag(l: CaptureLag): [string, string] {
  const behind = l.lagTransactions === null ? "the WAL no longer holds the head's position (watch takes a fresh snapshot when it starts)" : l.lagTransactions === 0 ? "up to date" : `${l.lagTransactions} transaction(s) behind, by at most ${l.lagSeconds.toFixed(1)} s`;
  return ["captured", `${l.db}: head ${l.head}, ${behind}; WAL ${formatBytes(l.walBytes)}`];
}

function describe(title: string, s: BackendStatus): [string, string][] {
  const lines: [string, string][] = [
    ["backup", title],
    ["head", s.damage ? `unknown: damaged after version ${s.damage.intactVersion}` : s.version === 0 ? "0 (empty)" : String(s.version)],
    ["rewind to", s.prevVersion === null ? "not possible (the last operation was a rewind, or empty)" : String(s.prevVersion)],
    ["base", s.baseVersion === 0 ? "empty database (no snapshot)" : `snapshot at version ${s.baseVersion}`],
    ["restorable", s.version === 0 ? "nothing yet" : restorable(s)],
    ["records", String(s.records)],
    ["bytes", formatBytes(s.bytes)],
  ];
  if (s.generations.length > 1) {
    const list = s.generations.map((g, i) => {
      const base = g.baseVersion === 0 ? "no base" : `base ${g.baseVersion}`;
      const when = g.firstTimestamp === undefined ? "" : `, from ${iso(g.firstTimestamp)}`;
      const damaged = g.damage ? ` (DAMAGED after version ${g.damage.intactVersion}: ${g.damage.message})` : "";
      return `${base}: ${g.firstVersion}..${g.lastVersion}${when}${i === s.generations.length - 1 ? " (live)" : ""}${damaged}`;
    });
    lines.push(["generations", list.join("; ")]);
  }
  if (s.settings) lines.push(["settings", describeSettings(s.settings)]);
  if (s.writer) {
    const w = s.writer;
    lines.push(["writer", w.holder ? `${w.holder}${w.expiresAt ? `, lease until ${iso(w.expiresAt)}` : ""}` : "none"]);
    if (w.fencing) lines.push(["fencing", w.fencing]);
  }
  if (s.damage) lines.push(["DAMAGED", `${s.damage.message}; restorable up to version ${s.damage.intactVersion} only`]);
  if (s.tornTail) {
    lines.push(["torn tail", `${s.tornTail.bytes} bytes at offset ${s.tornTail.offset} of ${s.tornTail.location}, ignored (dropped by the next writer)`]);
  }
  return lines;
}

function describeSettings(settings: NonNullable<BackendStatus["settings"]>): string {
  const { compression = "none", brotliQuality, encrypted, retention, capture } = settings;
  const parts = [capture ? "captured (tidemark watch)" : "write-ahead", `compression ${compression}${compression === "brotli" ? ` (quality ${brotliQuality ?? 1})` : ""}`, encrypted ? "encrypted" : "not encrypted"];
  const keep = [
    ...(retention?.bases ? [`${retention.bases} older base(s)`] : []),
    ...(retention?.maxAgeMs ? [`${formatDuration(retention.maxAgeMs)} of history`] : []),
  ];
  if (retention === undefined) parts.push(`keeps ${formatDuration(DEFAULT_RETENTION.maxAgeMs!)} of history (the default; --keep-for 0 for none)`);
  else parts.push(keep.length ? `keeps ${keep.join(" and ")}` : "keeps the live generation only");
  return parts.join(", ");
}

function print(lines: [string, string][]): void {
  for (const [k, v] of lines) process.stdout.write(`${k.padEnd(12)}${v}\n`);
}

/** The restore points: the range of versions, and of times when they are known. */
function restorable(s: BackendStatus): string {
  const from = s.generations[0]?.firstTimestamp;
  const times = from !== undefined && s.headTimestamp !== undefined ? `, ${iso(from)} .. ${iso(s.headTimestamp)}` : " (times sealed: give the key to see them)";
  return `${versionRange(s.firstVersion, s.version)}${times}`;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
