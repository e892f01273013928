/**
 * The host's end of the daemon's ingest channel (src/daemon/ingest-channel.ts, docs/daemon.md
 * "Ingest channel"): one Unix-socket connection upgraded to `tidemark-ingest/1`, then each
 * change a length-prefixed frame of its JSON, each answer a frame of an HTTP status and JSON.
 * Answers come in the order the changes were sent.
 */
import net from "node:net";

const PROTOCOL = "tidemark-ingest/1";

/** An answer: the status and JSON body POST …/changes would have given. */
export interface LinkReply {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** The daemon did not take the upgrade with a 4xx (a daemon without the channel): use HTTP. */
export class LinkUnsupported extends Error {}

/** The connection failed or closed before the answer came: whether the change was stored is unknown. */
export class LinkDown extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

interface Waiter {
  resolve(reply: LinkReply): void;
  reject(err: Error): void;
}

/** A lazily opened ingest channel to one database; reopened after a failure. */
export class IngestLink {
  readonly #socketPath: string;
  readonly #db: string;
  #socket: net.Socket | null = null;
  #opening: Promise<net.Socket> | null = null;
  #waiting: Waiter[] = [];
  #pending: Buffer = Buffer.alloc(0);
  #unsupported = false;

  constructor(socketPath: string, db: string) {
    this.#socketPath = socketPath;
    this.#db = db;
  }

  /** True once the daemon refused the upgrade: the caller uses HTTP from then on. */
  get unsupported(): boolean {
    return this.#unsupported;
  }

  /** Sends one JSON change; resolves with the daemon's answer. */
  send(json: Buffer): Promise<LinkReply> {
    const frame = Buffer.allocUnsafe(4 + json.length);
    frame.writeUInt32BE(json.length, 0);
    json.copy(frame, 4);
    const socket = this.#socket;
    if (socket) return this.#write(socket, frame);
    return (this.#opening ??= this.#open()).then((s) => this.#write(s, frame));
  }

  #write(socket: net.Socket, frame: Buffer): Promise<LinkReply> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      socket.write(frame);
    });
  }

  /** Connects and upgrades; rejects with LinkUnsupported, or LinkDown. */
  #open(): Promise<net.Socket> {
    return new Promise<net.Socket>((resolve, reject) => {
      const socket = net.connect(this.#socketPath);
      let head = Buffer.alloc(0);
      const fail = (err: Error) => {
        socket.destroy();
        this.#opening = null;
        reject(err);
      };
      const onError = (err: NodeJS.ErrnoException) => fail(new LinkDown(err.code ?? "ECONNRESET", err.message));
      const onClose = () => fail(new LinkDown("ECONNRESET", "the daemon closed the connection during the upgrade"));
      const onData = (chunk: Buffer) => {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head.subarray(0, end).toString("latin1"))?.[1] ?? 0);
        socket.off("data", onData).off("error", onError).off("close", onClose);
        if (status !== 101) {
          if (status >= 400 && status < 500) this.#unsupported = true;
          fail(status >= 400 && status < 500 ? new LinkUnsupported(`the daemon answered the upgrade with ${status}`) : new LinkDown("EUPGRADE", `the daemon answered the upgrade with ${status || "no HTTP status"}`));
          return;
        }
        this.#socket = socket;
        this.#opening = null;
        socket.on("data", (c: Buffer) => this.#receive(c));
        socket.once("error", (err: NodeJS.ErrnoException) => this.#down(socket, err.code ?? "ECONNRESET", err.message));
        socket.once("close", () => this.#down(socket, "ECONNRESET", "the daemon closed the ingest channel"));
        resolve(socket);
        if (head.length > end + 4) this.#receive(head.subarray(end + 4));
      };
      socket.on("data", onData).once("error", onError).once("close", onClose);
      socket.once("connect", () =>
        socket.write(`GET /v1/dbs/${encodeURIComponent(this.#db)}/ingest HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\nupgrade: ${PROTOCOL}\r\n\r\n`),
      );
    });
  }

  #receive(chunk: Buffer): void {
    let buf = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    while (buf.length >= 4) {
      const length = buf.readUInt32BE(0);
      if (buf.length < 4 + length) break;
      const status = buf.readUInt16BE(4);
      const text = buf.toString("utf8", 6, 4 + length);
      buf = buf.subarray(4 + length);
      const waiter = this.#waiting.shift();
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(text) as Record<string, unknown>;
      } catch {
        body = { error: text.slice(0, 200) };
      }
      waiter?.resolve({ status, body });
    }
    this.#pending = buf.length === 0 ? Buffer.alloc(0) : Buffer.from(buf);
  }

  #down(socket: net.Socket, code: string, message: string): void {
    if (this.#socket !== socket) return;
    this.#socket = null;
    this.#pending = Buffer.alloc(0);
    socket.destroy();
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const w of waiting) w.reject(new LinkDown(code, message));
  }

  /** Closes the connection; changes not yet answered fail with LinkDown. */
  close(): void {
    if (this.#socket) this.#down(this.#socket, "ECONNRESET", "the client closed the ingest channel");
  }
}
