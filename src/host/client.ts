/**
 * A client for the daemon's HTTP API, over its Unix socket or over TCP with an API key, built
 * on undici (Node's own HTTP client library, and measurably quicker per request than node:http).
 *
 * Transient failures (the daemon restarting, connection refused, a 5xx) are retried with
 * exponential backoff and jitter. A 409 is never retried: it raises GapError or StaleError,
 * because only the host can decide what to do about a version-rule refusal.
 */
import { backoffDelay, sleep } from "../util/backoff.js";
import fs from "node:fs";
import { Readable } from "node:stream";
import { Client, type Dispatcher } from "undici";
import type { BackendHead } from "../backup/backup.js";
import type { ChangeInput } from "../model/change.js";
import { statementsToWire } from "../model/change-json.js";
import type { CompactionStats } from "../ops/compaction.js";
import type { DatabaseStatus } from "../daemon/managed-database.js";
import { GapError, StaleError, TidemarkError, type ErrorCode, ERROR_CODES } from "../util/errors.js";
import type { IngestResult } from "../ops/ingest.js";
import { IngestLink, LinkDown, LinkUnsupported } from "./ingest-link.js";

/** Where the daemon is, and how hard to try. */
export type ConnectOptions = ({ readonly socket: string } | { readonly url: string; readonly apiKey: string }) & {
  /** The database to talk to; "default" unless given. */
  readonly db?: string;
  /** Attempts for a request that fails transiently (default 8, about 25 s in all). */
  readonly attempts?: number;
  /** First retry delay in ms (default 100); it doubles each time, up to 5 s. */
  readonly retryDelayMs?: number;
  /**
   * On a socket, send changes over the daemon's ingest channel (length-prefixed frames on one
   * upgraded connection, docs/daemon.md) instead of one HTTP POST each: the default. A daemon
   * without the channel is then talked to over HTTP.
   */
  readonly channel?: boolean;
};

/** A snapshot to upload: a file path, or a function that opens the bytes (called once per attempt). */
export type SnapshotUpload = string | (() => AsyncIterable<Uint8Array>);

/** The daemon, as one database's client sees it. */
export interface DaemonClient {
  /** The database this client talks to. */
  readonly db: string;
  /** Sends a change (transaction only); resolves once it is durable. */
  addChange(change: ChangeInput): Promise<IngestResult>;
  /** Uploads a new base snapshot as `version`, streamed. */
  addSnapshot(version: number, source: SnapshotUpload): Promise<IngestResult>;
  /** Drops the last change. */
  rewind(): Promise<BackendHead>;
  /** The database's status. */
  status(): Promise<DatabaseStatus>;
  /** Every database the daemon serves, and the ones that failed to open. */
  list(): Promise<{ databases: DatabaseStatus[]; failed: { name: string; code: string; error: string }[] }>;
  /** Compacts now. */
  compact(): Promise<CompactionStats>;
  /** The head as the version rules see it. */
  head(): Promise<BackendHead>;
  /** Closes idle connections. */
  close(): void;
}

/** Connects to a daemon. No request is made until a method is called. */
export function connect(options: ConnectOptions): DaemonClient {
  const db = options.db ?? "default";
  let http: Client;
  let where: string;
  const headers: Record<string, string> = {};
  let link: IngestLink | null = null;
  if ("socket" in options) {
    http = new Client("http://localhost", { socketPath: options.socket });
    where = options.socket;
    if (options.channel !== false) link = new IngestLink(options.socket, db);
  } else {
    const u = new URL(options.url);
    if (u.protocol !== "http:") throw new TidemarkError("E_USAGE", `daemon URL must be http://, got ${u.protocol}`);
    http = new Client(u.origin);
    where = u.host;
    headers["x-api-key"] = options.apiKey;
  }
  const attempts = options.attempts ?? 8;
  const baseDelay = options.retryDelayMs ?? 100;
  const base = `/v1/dbs/${encodeURIComponent(db)}`;

  async function once<T>(method: "GET" | "POST", path: string, body?: Buffer | AsyncIterable<Uint8Array>): Promise<T> {
    let res: Dispatcher.ResponseData;
    try {
      res = await http.request({
        method,
        path,
        headers: {
          ...headers,
          accept: "application/json",
          ...(body && { "content-type": Buffer.isBuffer(body) ? "application/json" : "application/octet-stream" }),
        },
        ...(body && { body: Buffer.isBuffer(body) ? body : Readable.from(body) }),
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const error = new TidemarkError("E_UNAVAILABLE", `cannot reach the tidemark daemon at ${where}: ${e.code ?? e.message}`, {
        hint: "is the daemon running? (tidemark daemon)",
        cause: err,
      });
      throw TRANSIENT_NET.has(e.code ?? "") ? new Transient(error) : error;
    }
    const text = await res.body.text();
    let json: Record<string, unknown> = {};
    try {
      json = text ? JSON.parse(text) : {};
    } catch {
      json = { error: text.slice(0, 200) };
    }
    if (res.statusCode >= 200 && res.statusCode < 300) return json as T;
    const err = fromResponse(res.statusCode, json);
    throw res.statusCode >= 500 ? new Transient(err) : err;
  }

  async function request<T>(method: "GET" | "POST", path: string, body?: () => Buffer | AsyncIterable<Uint8Array>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await once<T>(method, path, body?.());
      } catch (err) {
        if (!(err instanceof Transient) || attempt >= attempts) throw err instanceof Transient ? err.error : err;
        await sleep(backoffDelay(attempt, { baseMs: baseDelay, maxMs: 5000, jitter: 0.5 }));
      }
    }
  }

  /** A change over the ingest channel, retried as `request` retries; HTTP if the daemon has no channel. */
  async function viaLink<T>(link: IngestLink, json: Buffer): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      let error: TidemarkError;
      try {
        const reply = await link.send(json);
        if (reply.status >= 200 && reply.status < 300) return reply.body as T;
        error = fromResponse(reply.status, reply.body);
        if (reply.status < 500) throw error;
      } catch (err) {
        if (err instanceof LinkUnsupported) return request("POST", `${base}/changes`, () => json);
        if (!(err instanceof LinkDown)) throw err;
        error = new TidemarkError("E_UNAVAILABLE", `cannot reach the tidemark daemon at ${where}: ${err.code}`, { hint: "is the daemon running? (tidemark daemon)", cause: err });
      }
      if (attempt >= attempts) throw error;
      await sleep(backoffDelay(attempt, { baseMs: baseDelay, maxMs: 5000, jitter: 0.5 }));
    }
  }

  return {
    db,
    addChange(change) {
      if (change.snapshot) return Promise.reject(new TidemarkError("E_USAGE", "send snapshots with addSnapshot()"));
      const json = Buffer.from(
        JSON.stringify({
          version: change.version,
          ...(change.timestamp !== undefined && { timestamp: change.timestamp }),
          transaction: statementsToWire(change.transaction ?? []),
          ...(change.continuation && { continuation: true }),
        }),
      );
      return link && !link.unsupported ? viaLink(link, json) : request("POST", `${base}/changes`, () => json);
    },
    addSnapshot(version, source) {
      const open = typeof source === "string" ? () => fs.createReadStream(source, { highWaterMark: 1 << 20 }) : source;
      return request("POST", `${base}/snapshot?version=${version}`, open);
    },
    async rewind() {
      const r = await request<{ version: number }>("POST", `${base}/rewind`);
      return { version: r.version, prevVersion: null };
    },
    status: () => request("GET", base),
    list: () => request("GET", "/v1/dbs"),
    compact: () => request("POST", `${base}/compact`),
    async head() {
      const s = await request<DatabaseStatus>("GET", base);
      return { version: s.version, prevVersion: s.prevVersion };
    },
    close: () => {
      link?.close();
      void http.close().catch(() => {});
    },
  };
}

/** A failure worth retrying, carrying the error to raise if retries run out. */
class Transient extends Error {
  readonly error: TidemarkError;
  constructor(error: TidemarkError) {
    super(error.message);
    this.error = error;
  }
}

const TRANSIENT_NET = new Set([
  "ECONNREFUSED",
  "ENOENT",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "ECONNABORTED",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** Turns an error response into the typed error the daemon raised. */
function fromResponse(status: number, body: Record<string, unknown>): TidemarkError {
  const message = typeof body.error === "string" ? body.error : `HTTP ${status}`;
  const code = (typeof body.code === "string" && body.code in ERROR_CODES ? body.code : "E_INTERNAL") as ErrorCode;
  const head = typeof body.head === "number" ? body.head : -1;
  const hint = typeof body.hint === "string" ? body.hint : undefined;
  if (code === "E_GAP") return new GapError(head, -1, message);
  if (code === "E_STALE") return new StaleError(head, -1, message);
  return new TidemarkError(code, message, hint ? { hint } : {});
}
