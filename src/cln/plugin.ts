/**
 * tidemark as a Core Lightning plugin: the `db_write` hook, the `backup-compact` method, and
 * the version checks of the Python backup plugin, on the shared version rules.
 *
 * Real lightningd reports some writes without bumping data_version: around a table rebuild in
 * a migration it commits, then reports `PRAGMA foreign_keys = OFF;` (later `= ON;`) with the
 * version it just committed. Within one run, a write whose data_version equals the version just
 * acknowledged is therefore a continuation of that version, stored as a further record of it;
 * only the first write after a start can be a redo (lightningd stopped between our ack and its
 * commit), as in the Python plugin, and only when it bumps data_version as every numbered
 * transaction does.
 *
 * lightningd calls `db_write` with each transaction before it commits it. The plugin answers
 * `{"result": "continue"}` only once the change is durable; any other answer makes lightningd
 * stop without committing. So every failure (a version the rules refuse, a backend error, bad
 * params) is answered with "abort", after a "broken" log line that says what to do, and every
 * later write is refused too: the node must stop, not skip a change.
 *
 * The hook may arrive before `init`. The plugin therefore reads `backup.lock` when it first
 * needs it: from init's `lightning-dir` if init came first, otherwise from its working
 * directory, which is the lightning directory because lightningd starts plugins there (the
 * Python plugin relied on the same). Stdout carries protocol messages only.
 */
import fs from "node:fs";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import type { BackendHead } from "../backup/backup.js";
import { openDestination, type ClnDestination } from "./destination.js";
import { JsonStreamSplitter } from "./json-stream.js";
import { readBackupLock } from "./lock.js";
import { bumpsDataVersion } from "./node-db.js";
import { refusalMessage } from "./refusal.js";
import type { CompactionStats } from "../ops/compaction.js";
import { InputError, TidemarkError } from "../util/errors.js";
import type { Logger } from "../util/logger.js";
import { Mutex } from "../util/mutex.js";
import { reconcile } from "../model/version-rules.js";

/** lightningd's log levels for the `log` notification. */
export type ClnLogLevel = "debug" | "info" | "unusual" | "broken";

/** A JSON-RPC id: lightningd sends numbers or strings. */
type Id = string | number | null;

/** The largest data_version lightningd sends (a u32). */
const MAX_DATA_VERSION = 0xffff_ffff;

const CONTINUE = Object.freeze({ result: "continue" });
const ABORT = Object.freeze({ result: "abort" });

/** JSON-RPC 2.0 error codes. */
const PARSE_ERROR = -32700;
const INVALID_REQUEST = -32600;
const METHOD_NOT_FOUND = -32601;
const SERVER_ERROR = -32000;

/** What `getmanifest` answers. */
const MANIFEST = Object.freeze({
  options: [
    {
      name: "backup-destination",
      type: "string",
      description: "Unused: backup.lock in the lightning directory names the backup. Accepted so that a config written for the Python backup plugin still starts.",
    },
  ],
  rpcmethods: [
    {
      name: "backup-compact",
      usage: "",
      description: "Compact the tidemark backup: fold its log into a new base snapshot. The node keeps running meanwhile.",
    },
  ],
  hooks: [{ name: "db_write" }],
  subscriptions: [],
  // The hook guards every commit: the plugin must not be stopped while lightningd runs.
  dynamic: false,
});

/** How the plugin talks to lightningd. */
export interface ClnPluginOptions {
  /** Sends one JSON-RPC message to lightningd. */
  readonly send: (message: object) => void;
  /** The working directory lightningd started the plugin in. */
  readonly cwd: string;
}

/** One Core Lightning plugin session: from getmanifest to the end of stdin. */
export class ClnPlugin {
  readonly #send: (message: object) => void;
  readonly #cwd: string;
  readonly #writes = new Mutex();
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #logger: Logger;
  /** Aborted by close(): a compaction in progress is abandoned rather than waited for. */
  readonly #stopping = new AbortController();
  /** The directory backup.lock was or will be read from; fixed once used. */
  #lightningDir: string | null = null;
  #opening: Promise<ClnDestination> | null = null;
  #destination: ClnDestination | null = null;
  /** The last version acknowledged in this session; null until the first write passed the start-up check. */
  #head: number | null = null;
  #refused = false;

  constructor(options: ClnPluginOptions) {
    this.#send = options.send;
    this.#cwd = options.cwd;
    this.#logger = pluginLogger((level, message) => this.log(level, message));
  }

  /** Handles the text of one JSON-RPC message from lightningd. Replies are sent as work completes. */
  handle(text: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch (err) {
      this.#send({ jsonrpc: "2.0", id: null, error: { code: PARSE_ERROR, message: `invalid JSON: ${(err as Error).message}` } });
      return;
    }
    if (!isRecord(msg) || typeof msg.method !== "string") {
      // A response carries no method; the plugin sends no requests, so nothing waits for one.
      if (isRecord(msg) && "id" in msg && !("result" in msg) && !("error" in msg)) {
        this.#send({ jsonrpc: "2.0", id: msg.id as Id, error: { code: INVALID_REQUEST, message: "a request needs a method" } });
      }
      return;
    }
    const id = "id" in msg ? (msg.id as Id) : undefined;
    const reply = (result: object): void => {
      if (id !== undefined) this.#send({ jsonrpc: "2.0", id, result });
    };
    switch (msg.method) {
      case "getmanifest":
        reply(MANIFEST);
        return;
      case "init":
        reply(this.#init(msg.params));
        return;
      case "db_write":
        this.#track(this.#dbWrite(msg.params).then(reply));
        return;
      case "backup-compact":
        this.#track(
          this.#compact().then(reply, (err: unknown) => {
            if (id === undefined) return;
            const data = err instanceof TidemarkError ? { code: err.code, hint: err.hint } : undefined;
            this.#send({ jsonrpc: "2.0", id, error: { code: SERVER_ERROR, message: (err as Error).message, ...(data && { data }) } });
          }),
        );
        return;
      default:
        if (id !== undefined) this.#send({ jsonrpc: "2.0", id, error: { code: METHOD_NOT_FOUND, message: `unknown method ${msg.method}` } });
    }
  }

  /** Sends a line to lightningd's log. */
  log(level: ClnLogLevel, message: string): void {
    this.#send({ jsonrpc: "2.0", method: "log", params: { level, message } });
  }

  /** Abandons a compaction, waits for the other work in flight, then releases the backend (or the daemon connection). */
  async close(): Promise<void> {
    this.#stopping.abort(new TidemarkError("E_UNAVAILABLE", "the plugin is stopping: lightningd closed its input"));
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
    await this.#destination?.close();
  }

  #track(work: Promise<unknown>): void {
    this.#inFlight.add(work);
    void work.finally(() => this.#inFlight.delete(work));
  }

  #init(params: unknown): object {
    const p = isRecord(params) ? params : {};
    const configuration = isRecord(p.configuration) ? p.configuration : {};
    const dir = configuration["lightning-dir"];
    if (typeof dir === "string" && dir !== "") {
      const named = path.resolve(this.#cwd, dir);
      if (this.#lightningDir === null) this.#lightningDir = named;
      else if (!sameDirectory(this.#lightningDir, named)) {
        this.log(
          "unusual",
          `tidemark: a db_write arrived before init, so backup.lock was read from the working directory ${this.#lightningDir}; ` +
            `init names lightning-dir ${named}; the backup stays the one ${this.#lightningDir}/backup.lock names`,
        );
      }
    }
    const destinationOption = isRecord(p.options) ? p.options["backup-destination"] : undefined;
    if (typeof destinationOption === "string" && destinationOption !== "" && destinationOption !== "null") {
      this.log("info", "tidemark: the backup-destination option is ignored; backup.lock in the lightning directory names the backup");
    }
    // Open now so that a broken setup shows in the log at start-up, not at the first payment.
    // The answer to init does not wait: lightningd limits how long init may take.
    this.#track(
      this.#open().catch((err: unknown) => {
        const hint = err instanceof TidemarkError && err.hint ? ` Try: ${err.hint}.` : "";
        this.log("broken", `tidemark: cannot open the backup: ${(err as Error).message}. lightningd will stop at its first database write.${hint}`);
      }),
    );
    return {};
  }

  #dbWrite(params: unknown): Promise<object> {
    return this.#writes.run(async () => {
      let dataVersion: number | undefined;
      const firstWrite = this.#head === null;
      try {
        const write = parseDbWrite(params);
        dataVersion = write.dataVersion;
        if (this.#refused) {
          throw new TidemarkError("E_UNAVAILABLE", "an earlier write was refused, so every later one is (see the log line above)", {
            hint: "stop lightningd and follow the advice logged with the first refusal",
          });
        }
        const destination = await this.#open();
        const head: BackendHead = firstWrite ? await destination.head() : { version: this.#head!, prevVersion: null };
        // A repeat of the version just acknowledged: lightningd committed it, then reported
        // more writes without a new data_version (PRAGMAs around a table rebuild). At a start,
        // a repeat of the backup's head is that too when it does not bump data_version (a
        // migration's table rebuild can be the first write); otherwise it is a redo, below.
        if (write.dataVersion === head.version && (!firstWrite || !bumpsDataVersion(write.writes))) {
          await destination.addChange({ version: write.dataVersion, transaction: write.writes, continuation: true });
          this.#head = write.dataVersion;
          return CONTINUE;
        }
        // lightningd has committed data_version - 1. At start-up, a backup one ahead means it
        // stopped between our ack and its commit, and applyChange rewinds that change (its last
        // record); within a session, only the next version or a continuation is acceptable
        // (prevVersion null rules out a rewind).
        if (reconcile(write.dataVersion - 1, head) === "rewind") {
          this.log(
            "info",
            `tidemark: lightningd stopped after version ${write.dataVersion} was backed up and before it committed it; ` +
              "replacing the backup's copy of that version",
          );
        }
        await destination.addChange({ version: write.dataVersion, transaction: write.writes });
        this.#head = write.dataVersion;
        return CONTINUE;
      } catch (err) {
        this.#refused = true;
        this.log(
          "broken",
          refusalMessage(err, {
            dataVersion,
            firstWrite,
            lightningDir: this.#lightningDir ?? this.#cwd,
            ...(this.#destination && {
              destination: this.#destination.description,
              restoreCommand: (dest: string) => this.#destination!.restoreCommand(dest),
            }),
          }),
        );
        return ABORT;
      }
    });
  }

  async #compact(): Promise<CompactionStats> {
    const destination = await this.#open();
    const stats = await destination.compact(this.#stopping.signal);
    this.log(
      "info",
      stats.skipped
        ? `tidemark: nothing to compact: ${stats.skipped}`
        : `tidemark: compacted to a base at version ${stats.baseVersion}: ${stats.before.records} -> ${stats.after.records} records`,
    );
    return stats;
  }

  /** Opens the destination once; a failed open is retried by the next caller. */
  #open(): Promise<ClnDestination> {
    this.#opening ??= this.#openOnce().catch((err: unknown) => {
      this.#opening = null;
      throw err;
    });
    return this.#opening;
  }

  async #openOnce(): Promise<ClnDestination> {
    if (this.#lightningDir === null) {
      this.#lightningDir = this.#cwd;
      this.log("debug", `tidemark: needed backup.lock before init; reading it from the working directory ${this.#cwd}`);
    }
    const destination = await openDestination(readBackupLock(this.#lightningDir), this.#logger);
    let head: BackendHead;
    try {
      head = await destination.head();
    } catch (err) {
      await destination.close();
      throw err;
    }
    this.#destination = destination;
    this.log("info", `tidemark: backing up to ${destination.description}, at version ${head.version}`);
    return destination;
  }
}

/**
 * Runs a plugin session over `input` and `output` (stdin and stdout) until `input` ends or
 * `signal` aborts, then waits for the work in flight and closes.
 */
export async function runClnPlugin(options: { input: Readable; output: Writable; cwd: string; signal?: AbortSignal }): Promise<void> {
  const { input, output, signal } = options;
  output.on("error", (err: NodeJS.ErrnoException) => {
    // EPIPE: lightningd has gone, and stdin ends next. Stdout is unusable, so say it on stderr.
    process.stderr.write(`tidemark cln-plugin: cannot write to lightningd: ${err.code ?? err.message}\n`);
  });
  const plugin = new ClnPlugin({ send: (message) => output.write(`${JSON.stringify(message)}\n\n`), cwd: options.cwd });
  const splitter = new JsonStreamSplitter((junk) => plugin.log("unusual", `tidemark: ignoring ${junk.length} characters of non-JSON input`));
  try {
    await new Promise<void>((resolve, reject) => {
      input.on("data", (chunk: Buffer) => {
        for (const text of splitter.push(chunk)) plugin.handle(text);
      });
      input.once("end", resolve);
      input.once("error", reject);
      signal?.addEventListener("abort", () => resolve(), { once: true });
    });
  } finally {
    input.removeAllListeners("data");
    // After a signal, stdin is still open; destroying it lets the process exit.
    if (!input.readableEnded) input.destroy();
    if (splitter.pending > 0) plugin.log("unusual", `tidemark: input ended inside a message; ${splitter.pending} characters dropped`);
    await plugin.close();
  }
}

/** The data of a db_write hook call. */
interface DbWrite {
  readonly dataVersion: number;
  readonly writes: string[];
}

/**
 * Reads db_write params: `{data_version, writes}`, also nested as `{db_write: {…}}` or wrapped
 * in a one-element positional array, as lightningd versions have sent them.
 */
function parseDbWrite(params: unknown): DbWrite {
  let p = Array.isArray(params) && params.length === 1 ? params[0] : params;
  if (isRecord(p) && isRecord(p.db_write)) p = p.db_write;
  if (!isRecord(p)) throw new InputError(`db_write params: expected {"data_version": N, "writes": [...]}, got ${preview(params)}`);
  const v = p.data_version;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > MAX_DATA_VERSION) {
    throw new InputError(`db_write params: data_version must be an integer from 1 to ${MAX_DATA_VERSION}, got ${preview(v)}`, {
      hint: "this lightningd speaks a db_write format tidemark does not know; report it with the lightningd version",
    });
  }
  const writes = p.writes;
  if (!Array.isArray(writes) || !writes.every((w): w is string => typeof w === "string")) {
    throw new InputError(`db_write params: writes must be an array of SQL strings, got ${preview(writes)}`, {
      hint: "this lightningd speaks a db_write format tidemark does not know; report it with the lightningd version",
    });
  }
  return { dataVersion: v, writes };
}

/** A Logger whose lines go to lightningd's log (pino-style fields appended as key=value). */
function pluginLogger(log: (level: ClnLogLevel, message: string) => void): Logger {
  const at = (level: ClnLogLevel) => (fields: Record<string, unknown>, msg: string) => {
    const extra = Object.entries(fields).map(([k, v]) => `${k}=${v instanceof Error ? v.message : typeof v === "string" ? v : JSON.stringify(v)}`);
    log(level, `tidemark: ${msg}${extra.length ? ` (${extra.join(" ")})` : ""}`);
  };
  const logger: Logger = { debug: at("debug"), info: at("info"), warn: at("unusual"), error: at("broken"), child: () => logger };
  return logger;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function sameDirectory(a: string, b: string): boolean {
  try {
    return fs.realpathSync(a) === fs.realpathSync(b);
  } catch {
    return path.resolve(a) === path.resolve(b); // a directory that vanished: compare the names
  }
}

function preview(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
