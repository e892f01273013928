/**
 * The logging interface the core writes to: the subset of pino's API it uses, so the daemon can
 * pass a pino logger and the CLI a terse terminal one.
 */
import { pino } from "pino";

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

/**
 * The daemon's root logger: pino, JSON lines on stdout, ISO timestamps. Secrets are redacted
 * should a request's headers or a config ever be logged.
 */
export function daemonLogger(level: string): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ["apiKey", "*.apiKey", "tcp.apiKey", "headers.authorization", 'headers["x-api-key"]'], censor: "[redacted]" },
    serializers: { err: pino.stdSerializers.err },
  }) as unknown as Logger;
}
