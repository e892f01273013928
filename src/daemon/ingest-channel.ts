/**
 * The lean ingest path on the Unix socket: an HTTP/1.1 Upgrade to `tidemark-ingest/1`, then
 * length-prefixed frames both ways (docs/daemon.md, "Ingest channel"). A frame is a 4-byte
 * big-endian length, then that many bytes:
 *
 *   host → daemon   the JSON change, exactly the body of POST /v1/dbs/:db/changes
 *   daemon → host   a 2-byte big-endian HTTP status, then the JSON the POST would answer
 *
 * Changes are handed to the database in the order sent (a host may send the next before the
 * last is answered), and each is answered in that order once it is durable (or refused) — the same checks, acks and errors as the POST, without
 * HTTP's parsing and objects per change. The TCP listener does not offer it: HTTP+JSON stays the
 * way for everyone, and this is only for hosts on the socket.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { DB_NAME_RE } from "./config.js";
import { failureReply, ingestJson, type ApiContext } from "./http-api.js";
import { TidemarkError } from "../util/errors.js";

/** The protocol name in the Upgrade header. */
export const INGEST_PROTOCOL = "tidemark-ingest/1";

/** What the channel's failures are logged as. */
const WHERE = "ingest channel";

/**
 * Changes received and not yet answered, at most, and their bytes: past either, the channel
 * stops reading until answers catch up. It also stops while the host does not read its answers.
 * Either way the socket's buffers fill and the host's writes wait: what a channel holds stays
 * bounded whatever a host sends.
 */
const MAX_IN_FLIGHT = 256;
const MAX_IN_FLIGHT_BYTES = 8 << 20;

/** An answer: the HTTP status and JSON body the POST would give. */
interface Reply {
  readonly status: number;
  readonly body: unknown;
}

const PATH_RE = /^\/v1\/dbs\/([^/?]+)\/ingest$/;

/** The ingest channels open on the socket, so that the daemon's stop can drain them. */
export class IngestChannels {
  readonly #ctx: ApiContext;
  readonly #open = new Set<Channel>();

  constructor(ctx: ApiContext) {
    this.#ctx = ctx;
  }

  /** The socket server's `upgrade` listener. */
  readonly upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const refusal = this.#refusal(req);
    if (refusal) {
      const body = JSON.stringify({ error: refusal.message, code: refusal.code, ...(refusal.hint && { hint: refusal.hint }) });
      const status = refusal.code === "E_NOT_FOUND" ? "404 Not Found" : refusal.code === "E_UNAVAILABLE" ? "503 Service Unavailable" : "400 Bad Request";
      socket.end(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    const name = decodeURIComponent(PATH_RE.exec(req.url!)![1]!);
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: ${INGEST_PROTOCOL}\r\n\r\n`);
    const channel = new Channel(this.#ctx, name, socket, () => this.#open.delete(channel));
    this.#open.add(channel);
    if (head.length > 0) channel.receive(head);
  };

  #refusal(req: IncomingMessage): TidemarkError | null {
    if (req.headers.upgrade?.toLowerCase() !== INGEST_PROTOCOL || req.method !== "GET") {
      return new TidemarkError("E_INPUT", `the socket upgrades only GET /v1/dbs/<db>/ingest to ${INGEST_PROTOCOL}`);
    }
    const m = PATH_RE.exec(req.url ?? "");
    if (!m) return new TidemarkError("E_NOT_FOUND", `no ingest channel at ${(req.url ?? "").slice(0, 100)}`, { hint: "GET /v1/dbs/<db>/ingest" });
    let name: string;
    try {
      name = decodeURIComponent(m[1]!);
    } catch {
      return new TidemarkError("E_INPUT", "the database name in the URL is not valid percent-encoding");
    }
    if (!DB_NAME_RE.test(name)) return new TidemarkError("E_INPUT", `invalid database name ${JSON.stringify(name.slice(0, 80))}`);
    if (!this.#ctx.database(name)) return new TidemarkError("E_NOT_FOUND", `no database named "${name}"`);
    if (this.#ctx.draining()) return new TidemarkError("E_UNAVAILABLE", "the daemon is shutting down", { hint: "retry once it is back" });
    return null;
  }

  /** Lets the changes received finish and be answered, then closes every channel. */
  async close(): Promise<void> {
    await Promise.all([...this.#open].map((c) => c.close()));
  }
}

/** One host's channel to one database. */
class Channel {
  readonly #ctx: ApiContext;
  readonly #db: string;
  readonly #socket: Duplex;
  /** Bytes received and not yet a whole frame. */
  #pending: Buffer = Buffer.alloc(0);
  /** The answers, in the order the changes came. */
  #queue: Promise<void> = Promise.resolve();
  #closed = false;
  /** A frame was refused as too large: nothing more is read. */
  #ending = false;
  /** Changes received and not answered yet, and their bytes (MAX_IN_FLIGHT). */
  #inFlight = 0;
  #inFlightBytes = 0;
  /** Reading stopped until answers catch up. */
  #held = false;

  constructor(ctx: ApiContext, db: string, socket: Duplex, gone: () => void) {
    this.#ctx = ctx;
    this.#db = db;
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    socket.on("drain", () => this.#flow());
    // A host that goes away mid-frame: what it sent whole is still stored and answered into the void.
    socket.on("error", (err: NodeJS.ErrnoException) => ctx.log.debug({ db, code: err.code }, "ingest channel closed by the host"));
    socket.once("close", () => {
      this.#closed = true;
      gone();
    });
  }

  /** Takes every whole frame in `chunk` (and what came before it). */
  receive(chunk: Buffer): void {
    if (this.#ending) return;
    let buf = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    const limit = this.#ctx.maxChangeBytes();
    while (buf.length >= 4) {
      const length = buf.readUInt32BE(0);
      if (length > limit) {
        // The frame is not read: answered like the POST's 413, then the channel closes.
        const err = new TidemarkError("E_TOO_LARGE", `a change of ${length} bytes exceeds the ${limit}-byte limit`, {
          hint: "split the transaction, send the data as a snapshot, or raise maxChangeBytes in the config",
        });
        this.#enqueue(() => Promise.resolve(failureReply(this.#ctx, this.#ctx.database(this.#db), err, WHERE)), 0);
        this.#queue = this.#queue.then(() => void this.#socket.end());
        this.#ending = true;
        this.#socket.pause();
        this.#pending = Buffer.alloc(0);
        return;
      }
      if (buf.length < 4 + length) break;
      const body = buf.subarray(4, 4 + length);
      this.#enqueue(() => this.#ingest(body), length);
      buf = buf.subarray(4 + length);
    }
    // What is kept is copied, so that the chunk it came from can go.
    this.#pending = buf.length === 0 ? Buffer.alloc(0) : Buffer.from(buf);
    this.#flow();
  }

  /** Stops reading while too much is unanswered or the host reads no answers; reads again once neither holds. */
  #flow(): void {
    if (this.#ending || this.#closed) return;
    const hold = this.#inFlight >= MAX_IN_FLIGHT || this.#inFlightBytes >= MAX_IN_FLIGHT_BYTES || this.#socket.writableNeedDrain;
    if (hold === this.#held) return;
    this.#held = hold;
    if (hold) this.#socket.pause();
    else this.#socket.resume();
  }

  #ingest(body: Buffer): Promise<Reply> {
    const db = this.#ctx.database(this.#db);
    if (!db) return Promise.resolve(failureReply(this.#ctx, undefined, new TidemarkError("E_NOT_FOUND", `no database named "${this.#db}" (it was removed from the config)`), WHERE));
    if (this.#ctx.draining()) return Promise.resolve(failureReply(this.#ctx, undefined, new TidemarkError("E_UNAVAILABLE", "the daemon is shutting down", { hint: "retry once it is back" }), WHERE));
    return ingestJson(db, body).then(
      (result): Reply => ({ status: 200, body: result }),
      (err: unknown) => failureReply(this.#ctx, db, err, WHERE),
    );
  }

  /** Starts `work` now (the database's own queue keeps the changes in order) and answers it after those before it. */
  #enqueue(work: () => Promise<Reply>, bytes: number): void {
    this.#inFlight++;
    this.#inFlightBytes += bytes;
    const reply = work();
    this.#queue = this.#queue
      .then(() => reply)
      .then((r) => {
        this.#answer(r.status, r.body);
        this.#inFlight--;
        this.#inFlightBytes -= bytes;
        this.#flow();
      });
  }

  #answer(status: number, body: unknown): void {
    if (this.#closed) return;
    const text = JSON.stringify(body);
    const size = Buffer.byteLength(text);
    const frame = Buffer.allocUnsafe(6 + size);
    frame.writeUInt32BE(2 + size, 0);
    frame.writeUInt16BE(status, 4);
    frame.write(text, 6, "utf8");
    this.#socket.write(frame);
  }

  /** Stops reading, answers what was received, and ends the connection. */
  async close(): Promise<void> {
    this.#ending = true;
    this.#socket.pause();
    await this.#queue;
    if (this.#closed) return;
    await new Promise<void>((resolve) => {
      this.#socket.once("close", () => resolve());
      this.#socket.end();
      // A host that does not close its end: it has had every answer.
      setTimeout(() => this.#socket.destroy(), 1000).unref();
    });
  }
}

