/**
 * The logging interface the core writes to: the subset of pino's API it uses, so the daemon can
 * pass a pino logger and the CLI a terse terminal one.
 */
import fs from "node:fs";
import { createRequire } from "node:module";
import type { Level, pino as Pino } from "pino";

/** pino, loaded when the daemon's logger is made: commands that log to the terminal never load it. */
function loadPino(): typeof Pino {
  return (createRequire(import.meta.url)("pino") as { pino: typeof Pino }).pino;
}

/** A log method: fields first, then a lowercase message (pino's calling convention). */
export type LogFn = (fields: Record<string, unknown>, msg: string) => void;

/** The logger the core accepts. A pino Logger satisfies it. */
export interface Logger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  child(bindings: Record<string, unknown>): Logger;
}

/** A logger that drops everything. */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger;
  },
};

/**
 * A logger for terminal commands: warnings and errors go to stderr as one readable line,
 * `warning: <msg> (key=value …)`; debug and info are dropped unless `verbose`.
 */
export function terminalLogger(verbose = false, write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const line = (level: string) => (fields: Record<string, unknown>, msg: string) => {
    const extra = Object.entries(fields)
      .filter(([k]) => k !== "err")
      .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    write(`${level}: ${msg}${extra.length ? ` (${extra.join(" ")})` : ""}\n`);
  };
  const quiet = () => {};
  const logger: Logger = {
    debug: verbose ? line("debug") : quiet,
    info: verbose ? line("info") : quiet,
    warn: line("warning"),
    error: line("error"),
    child: () => logger,
  };
  return logger;
}

/** How the daemon writes its log lines. */
export interface DaemonLogOptions {
  /** json (pino's lines, the default) or text (one readable line per entry). */
  readonly format?: "json" | "text";
  /** Start each line with a syslog priority, `<3>` … `<7>`, which journald reads; by default when stdout is the journal. */
  readonly priorityPrefix?: boolean;
  /** Where lines go; stdout by default. */
  readonly write?: (line: string) => void;
}

/** pino's levels and the syslog priorities journald files them under (sd-daemon(3)). */
const PRIORITIES: [level: string, value: number, priority: number][] = [
  ["trace", 10, 7],
  ["debug", 20, 7],
  ["info", 30, 6],
  ["warn", 40, 4],
  ["error", 50, 3],
  ["fatal", 60, 2],
];

/**
 * True when stdout is connected to the systemd journal: systemd sets JOURNAL_STREAM to the
 * device and inode of that stream (systemd.exec(5)), and they must match stdout's own.
 */
export function stdoutIsJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? "");
  if (!m) return false;
  try {
    const st = fs.fstatSync(1);
    return String(st.dev) === m[1] && String(st.ino) === m[2];
  } catch {
    return false;
  }
}

/**
 * The daemon's root logger: pino, JSON lines on stdout, ISO timestamps. Secrets are redacted
 * should a request's headers or a config ever be logged. Under systemd each line starts with its
 * priority, so that `journalctl -p warning` shows warnings and errors.
 */
export function daemonLogger(level: string, options: DaemonLogOptions = {}): Logger {
  const write = options.write ?? ((line: string) => void process.stdout.write(line));
  const prefixed = options.priorityPrefix ?? stdoutIsJournal();
  const text = options.format === "text";
  const pino = loadPino();
  const opts = {
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ["apiKey", "*.apiKey", "tcp.apiKey", "headers.authorization", 'headers["x-api-key"]'], censor: "[redacted]" },
    serializers: { err: pino.stdSerializers.err },
  };
  if (!prefixed && !text && !options.write) return pino(opts) as unknown as Logger;
  // One stream per level (dedupe: each line goes to the highest that matches), each with its prefix.
  const streams = PRIORITIES.map(([name, , priority]) => ({
    level: name as Level,
    stream: { write: (line: string) => write(`${prefixed ? `<${priority}>` : ""}${text ? textLine(line) : line}`) },
  }));
  return pino(opts, pino.multistream(streams, { dedupe: true })) as unknown as Logger;
}

/** `2026-11-21T09:00:00.000Z WARN request refused (db=main status=409 code=E_GAP)` from a JSON line. */
function textLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const { time, level, msg, pid: _pid, err, ...fields } = entry;
  const name = PRIORITIES.find(([, value]) => value === level)?.[0] ?? String(level);
  const extra = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  const error = err && typeof err === "object" ? ` error=${JSON.stringify((err as { message?: unknown }).message)}` : "";
  return `${String(time)} ${name.toUpperCase()} ${String(msg)}${extra.length ? ` (${extra.join(" ")})` : ""}${error}\n`;
}
