/**
 * The daemon's HTTP API, served on the Unix socket and, with an API key, on TCP.
 *
 * | endpoint                              | what it does                                   |
 * |---------------------------------------|------------------------------------------------|
 * | POST /v1/dbs/:db/changes              | a JSON change; 200 {"version"} once durable    |
 * | POST /v1/dbs/:db/snapshot?version=N   | a raw SQLite file, streamed, as a new base     |
 * | POST /v1/dbs/:db/rewind               | drop the last change                           |
 * | POST /v1/dbs/:db/compact              | compact now                                    |
 * | POST /v1/dbs/:db/verify               | verify, with a test restore                    |
 * | GET  /v1/dbs, /v1/dbs/:db             | status                                         |
 * | GET  /v1/dbs/:db/backup[?version=N]   | a restored SQLite file, streamed               |
 * | GET  /v1/dbs/:db/backup?time=ISO       | the same, as of a moment                       |
 * | GET  /healthz, /metrics               | health; Prometheus metrics                     |
 * | GET  /, POST /login, /logout          | the status page (status-page.ts)               |
 *
 * Downloads and verify-now take a token from the client's bucket (rate-limit.ts): over it, 429
 * with Retry-After. On TCP every route but /healthz and the page's assets needs the API key or
 * the page's session cookie; a POST with the cookie must also carry `X-Tidemark-CSRF`, which a
 * page on another site cannot send.
 *
 * Every error is JSON: `{"error", "code", "hint"?, "head"?}` with a 4xx or 5xx status. A client
 * that closes the connection mid-body is a debug line (client-abort.ts), not an error.
 */
import fs from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { changeFromWire, parseWireChange } from "../model/change-json.js";
import { DB_NAME_RE } from "./config.js";
import type { ManagedDatabase } from "./managed-database.js";
import type { IngestResult } from "../ops/ingest.js";
import { InputError, TidemarkError, type ErrorCode } from "../util/errors.js";
import type { Logger } from "../util/logger.js";
import type { Metrics } from "./metrics.js";
import { ApiAuth } from "./api-auth.js";
import { formatDuration } from "../util/duration.js";
import { TokenBuckets } from "./rate-limit.js";
import { LOGIN_LIMIT, isNavigation, sendErrorPage, servePage } from "./status-page.js";
import { asClientAbort, isClientAbort } from "./client-abort.js";

const SQLITE_HEADER = Buffer.from("SQLite format 3\0", "latin1");

/** What the API needs from the daemon. */
export interface ApiContext {
  database(name: string): ManagedDatabase | undefined;
  databases(): ManagedDatabase[];
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Largest JSON change accepted, in bytes. */
  maxChangeBytes(): number;
  /** Where backup downloads are restored before they are sent. */
  tmpDir(): string;
  /** True once the daemon is draining: new requests get 503. */
  draining(): boolean;
  /** Databases that failed to open. */
  failures(): { name: string; code: string; error: string }[];
  /** The token buckets for downloads and verify-now. */
  limiter(): TokenBuckets;
}

const STATUS_BY_CODE: Partial<Record<ErrorCode, number>> = {
  E_INPUT: 400,
  E_USAGE: 400,
  E_NONDETERMINISTIC: 400,
  E_AUTH: 401,
  E_NOT_FOUND: 404,
  E_RANGE: 404,
  E_GAP: 409,
  E_STALE: 409,
  E_REWIND: 409,
  E_CONFLICT: 409,
  E_MODE: 409,
  E_REPLAY: 409,
  E_TOO_LARGE: 413,
  E_RATE_LIMIT: 429,
  E_UNAVAILABLE: 503,
  E_LOCKED: 503,
  E_BACKEND: 503,
};

/** Returns the request handler; with `apiKey`, every route but /healthz requires it. */
export function createApiHandler(ctx: ApiContext, apiKey?: string): (req: IncomingMessage, res: ServerResponse) => void {
  const auth = apiKey === undefined ? undefined : new ApiAuth(apiKey);
  const logins = new TokenBuckets(LOGIN_LIMIT);
  return (req, res) => {
    handle(ctx, auth, logins, req, res).catch((err: unknown) => sendError(ctx, req, res, err));
  };
}

async function handle(ctx: ApiContext, auth: ApiAuth | undefined, logins: TokenBuckets, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? "/", "http://tidemark.invalid");
  if (url.pathname === "/healthz" && req.method === "GET") {
    const failed = ctx.failures();
    const status = ctx.draining() ? "draining" : failed.length > 0 ? "degraded" : "ok";
    sendJson(res, status === "ok" ? 200 : 503, { status, databases: ctx.databases().length, ...(failed.length > 0 && { failed }) });
    return;
  }
  const method = auth ? auth.check(req) : "socket";
  if (await servePage(req, res, url.pathname, auth, method !== null, logins)) return;
  if (method === null) {
    throw new TidemarkError("E_AUTH", "missing or wrong API key", { hint: "send it as X-API-Key or Authorization: Bearer <key>, or sign in at /" });
  }
  if (method === "cookie" && req.method !== "GET" && req.headers["x-tidemark-csrf"] === undefined) {
    throw Object.assign(new TidemarkError("E_AUTH", "a signed-in browser may POST only from the status page (the X-Tidemark-CSRF header is missing)"), {
      status: 403,
    });
  }
  if (url.pathname === "/metrics" && req.method === "GET") {
    res.writeHead(200, { "content-type": ctx.metrics.registry.contentType });
    res.end(await ctx.metrics.registry.metrics());
    return;
  }
  if (ctx.draining()) throw new TidemarkError("E_UNAVAILABLE", "the daemon is shutting down", { hint: "retry once it is back" });

  const parts = url.pathname.split("/").filter((p) => p !== "");
  if (parts[0] !== "v1" || parts[1] !== "dbs" || parts.length > 4) throw notFound(url.pathname);
  if (parts.length === 2) {
    allow(req, "GET");
    sendJson(res, 200, { databases: await Promise.all(ctx.databases().map((d) => d.status())), failed: ctx.failures() });
    return;
  }
  const db = lookup(ctx, parts[2]!);
  try {
    await route(ctx, db, parts[3], url, req, res);
  } catch (err) {
    if (isClientAbort(err)) throw err; // not the database's failure: no metric, no status entry
    noteFailure(ctx, db, err, { method: req.method, path: url.pathname });
    throw err;
  }
}

/** Counts and logs a request's failure about `db`; a version-rule refusal gets the head it met. */
function noteFailure(ctx: ApiContext, db: ManagedDatabase, err: unknown, where: Record<string, unknown>): void {
  // A refusal by the version rules tells the host where the backup stands.
  if (err instanceof TidemarkError && STATUS_BY_CODE[err.code] === 409) Object.assign(err, { head: db.head().version });
  db.recordFailure(err);
  if (err instanceof TidemarkError) {
    const status = statusOf(err);
    ctx.log[status < 500 ? "warn" : "error"]({ db: db.name, ...where, status, code: err.code, error: err.message }, status < 500 ? "request refused" : "request failed");
  }
}

/**
 * What a request that failed with `err` is answered (status and JSON body), counted and logged
 * as the HTTP handler does; for the ingest channel (ingest-channel.ts).
 */
export function failureReply(ctx: ApiContext, db: ManagedDatabase | undefined, err: unknown, path: string): { status: number; body: Record<string, unknown> } {
  if (db) noteFailure(ctx, db, err, { path });
  else if (!(err instanceof TidemarkError)) ctx.log.error({ err }, "request failed unexpectedly");
  return errorReply(err);
}

async function route(ctx: ApiContext, db: ManagedDatabase, action: string | undefined, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
  switch (action) {
    case undefined:
      allow(req, "GET");
      sendJson(res, 200, await db.status());
      return;
    case "changes":
      allow(req, "POST");
      return postChange(ctx, db, req, res);
    case "snapshot":
      allow(req, "POST");
      return postSnapshot(db, url, req, res);
    case "rewind": {
      allow(req, "POST");
      const head = await db.rewind();
      sendJson(res, 200, { version: head.version });
      return;
    }
    case "compact":
      allow(req, "POST");
      sendJson(res, 200, await db.compactNow());
      return;
    case "verify": {
      allow(req, "POST");
      takeToken(ctx, req, "verify");
      const report = await db.verifyNow();
      sendJson(res, report.ok ? 200 : 500, report);
      return;
    }
    case "backup":
      allow(req, "GET");
      takeToken(ctx, req, "download");
      return getBackup(ctx, db, url, res);
    default:
      throw notFound(url.pathname);
  }
}

async function postChange(ctx: ApiContext, db: ManagedDatabase, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readBody(req, ctx.maxChangeBytes());
  sendJson(res, 200, await ingestJson(db, body));
}

/** Checks and stores one JSON change (the body of POST …/changes, or an ingest channel's frame); resolves once durable. */
export async function ingestJson(db: ManagedDatabase, body: Buffer): Promise<IngestResult> {
  const wire = parseWireChange(body.toString("utf8"), {
    jsonHint: 'send one JSON change, like {"version":1,"transaction":["CREATE TABLE t(x)"]}',
  });
  return db.ingest(changeFromWire(wire), body.length);
}

async function postSnapshot(db: ManagedDatabase, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const version = versionParam(url, true)!;
  let bytes = 0;
  // The body is passed on as it arrives; only its first bytes are checked here.
  async function* sqliteFile(): AsyncGenerator<Buffer> {
    let head = Buffer.alloc(0);
    for await (const chunk of clientBody(req)) {
      bytes += chunk.length;
      if (head.length < SQLITE_HEADER.length) {
        head = Buffer.concat([head, chunk]);
        if (head.length < SQLITE_HEADER.length) continue;
        if (!head.subarray(0, SQLITE_HEADER.length).equals(SQLITE_HEADER)) {
          throw new InputError("the request body is not a SQLite database", { hint: "POST the raw bytes of a SQLite file" });
        }
        yield head;
        continue;
      }
      yield chunk;
    }
    if (head.length < SQLITE_HEADER.length) throw new InputError("the request body is not a SQLite database (too short)");
  }
  const result = await db.ingest({ version, snapshot: sqliteFile() }, 0);
  res.setHeader("x-tidemark-bytes", String(bytes));
  sendJson(res, 200, result);
}

async function getBackup(ctx: ApiContext, db: ManagedDatabase, url: URL, res: ServerResponse): Promise<void> {
  const version = versionParam(url, false);
  const time = timeParam(url);
  if (version !== undefined && time !== undefined) throw new InputError("give version or time, not both");
  const dir = fs.mkdtempSync(path.join(ctx.tmpDir(), "tidemark-backup-"));
  try {
    const file = path.join(dir, `${db.name}.db`);
    const restored = await db.restoreTo(file, { ...(version !== undefined && { version }), ...(time !== undefined && { time }) });
    res.writeHead(200, {
      "content-type": "application/octet-stream",
      "content-length": String(restored.bytes),
      "content-disposition": `attachment; filename="${db.name}-${restored.version}.db"`,
      "x-content-type-options": "nosniff",
      "x-tidemark-version": String(restored.version),
    });
    try {
      await pipeline(fs.createReadStream(file), res);
    } catch (err) {
      // The client went away mid-download (or right after the last byte): nothing to answer.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ERR_STREAM_PREMATURE_CLOSE" && code !== "EPIPE" && code !== "ECONNRESET") throw err;
      ctx.log.debug({ db: db.name, code }, "backup download ended early");
    }
  } finally {
    // Also when the client went away mid-download: pipeline rejects, and the file goes.
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function lookup(ctx: ApiContext, raw: string): ManagedDatabase {
  let name: string;
  try {
    name = decodeURIComponent(raw);
  } catch {
    throw new InputError("the database name in the URL is not valid percent-encoding");
  }
  if (!DB_NAME_RE.test(name)) {
    throw new InputError(`invalid database name ${JSON.stringify(name.slice(0, 80))}`, { hint: "names are 1 to 64 of a-z, 0-9, _ and -" });
  }
  const db = ctx.database(name);
  if (!db) {
    throw new TidemarkError("E_NOT_FOUND", `no database named "${name}"`, {
      hint: `configured: ${ctx.databases().map((d) => d.name).join(", ") || "none"}`,
    });
  }
  return db;
}

function versionParam(url: URL, required: boolean): number | undefined {
  const raw = url.searchParams.get("version");
  if (raw === null) {
    if (required) throw new InputError("the version query parameter is required", { hint: "POST /v1/dbs/<db>/snapshot?version=N" });
    return undefined;
  }
  const n = Number(raw);
  if (!/^[0-9]+$/.test(raw) || !Number.isSafeInteger(n) || n < 1) throw new InputError(`version must be an integer >= 1, got ${JSON.stringify(raw)}`);
  return n;
}

function timeParam(url: URL): number | undefined {
  const raw = url.searchParams.get("time");
  if (raw === null) return undefined;
  const ms = Date.parse(raw);
  if (!/^\d{4}-\d{2}-\d{2}/.test(raw) || Number.isNaN(ms)) throw new InputError(`time must be an ISO-8601 time like 2026-11-22T03:00:00Z, got ${JSON.stringify(raw.slice(0, 40))}`);
  return ms;
}

/** Takes a token from the client's bucket, or refuses with 429 and when to retry. */
function takeToken(ctx: ApiContext, req: IncomingMessage, what: string): void {
  const limiter = ctx.limiter();
  const waitMs = limiter.take(req.socket.remoteAddress ?? "unix socket");
  if (waitMs === 0) return;
  const { burst, everyMs } = limiter.limit;
  const seconds = Math.ceil(waitMs / 1000);
  throw Object.assign(
    new TidemarkError("E_RATE_LIMIT", `too many downloads and verifies from this client (a ${what} was refused): ${burst} at once, then one every ${formatDuration(everyMs)}`, {
      hint: `retry in ${seconds} s, or raise rateLimit in the daemon config`,
    }),
    { retryAfter: seconds },
  );
}

/** The request body's chunks; a client that closes the connection half-way ends it with a ClientAbort. */
async function* clientBody(req: IncomingMessage): AsyncGenerator<Buffer> {
  try {
    yield* req as AsyncIterable<Buffer>;
  } catch (err) {
    throw asClientAbort(err, req);
  }
}

/** Reads a whole (small) body, refusing more than `limit` bytes with 413. */
async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  const tooLarge = () =>
    new TidemarkError("E_TOO_LARGE", `request body exceeds the ${limit}-byte limit`, {
      hint: "split the transaction, send the data as a snapshot, or raise maxChangeBytes in the config",
    });
  if (Number.isFinite(declared) && declared > limit) throw tooLarge();
  // Plain events rather than an async iterator: this is on every change's path.
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners("data");
        req.pause();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.once("end", () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size)));
    req.once("error", (err) => reject(asClientAbort(err, req)));
  });
}

function allow(req: IncomingMessage, method: string): void {
  if (req.method !== method) {
    throw Object.assign(new TidemarkError("E_INPUT", `${req.method} is not allowed here; use ${method}`), { status: 405, allow: method });
  }
}

function notFound(pathname: string): TidemarkError {
  return new TidemarkError("E_NOT_FOUND", `no such endpoint: ${pathname.slice(0, 100)}`, { hint: "see the API table in the README" });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** The HTTP status for an error: its own (405 for a wrong method), or its code's. */
function statusOf(err: TidemarkError): number {
  return (err as { status?: number }).status ?? STATUS_BY_CODE[err.code] ?? 500;
}

function sendError(ctx: ApiContext, req: IncomingMessage, res: ServerResponse, err: unknown): void {
  if (isClientAbort(err)) {
    ctx.log.debug({ method: req.method, path: req.url?.slice(0, 100) }, "client went away mid-request");
    res.destroy();
    return;
  }
  if (!(err instanceof TidemarkError)) ctx.log.error({ err }, "request failed unexpectedly");
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const { status, body } = errorReply(err);
  const allowHeader = (err as { allow?: string }).allow;
  if (allowHeader) res.setHeader("allow", allowHeader);
  if (status === 413) res.setHeader("connection", "close");
  const retryAfter = (err as { retryAfter?: number }).retryAfter;
  if (retryAfter !== undefined) res.setHeader("retry-after", String(retryAfter));
  if (isNavigation(req)) return sendErrorPage(res, status, String(body.error), body.hint as string | undefined);
  sendJson(res, status, body);
}

/** The status and JSON body an error is answered with. */
function errorReply(err: unknown): { status: number; body: Record<string, unknown> } {
  const known = err instanceof TidemarkError;
  const body: Record<string, unknown> = known
    ? { error: err.message, code: err.code, ...(err.hint && { hint: err.hint }) }
    : { error: "internal error; see the daemon log", code: "E_INTERNAL" };
  const head = (err as { head?: unknown }).head;
  if (typeof head === "number") body.head = head;
  return { status: known ? statusOf(err) : 500, body };
}
