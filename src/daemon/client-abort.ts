/**
 * A client that went away mid-request: it closed the connection before its body was complete,
 * or before the answer. That is the client's business, not a failure of the daemon: it is
 * logged at debug, and counted in no error metric (operators alert on `tidemark_errors_total`).
 */
import type { IncomingMessage } from "node:http";

/** The request's body stopped because the client closed the connection. */
export class ClientAbort extends Error {
  constructor(cause?: unknown) {
    super("the client closed the connection before the request was complete", cause === undefined ? undefined : { cause });
    this.name = "ClientAbort";
  }
}

/**
 * True for an error that means only that the client went away, also when a layer below wrapped
 * it (a backend reading the snapshot stream reports it as its own write failure, with the abort
 * as its cause).
 */
export function isClientAbort(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof ClientAbort) return true;
  }
  return false;
}

/** Codes with which Node ends a request or response whose connection the client closed. */
const GONE_CODES = new Set(["ECONNRESET", "EPIPE", "ERR_STREAM_PREMATURE_CLOSE"]);

/**
 * Turns an error reading `req` into a {@link ClientAbort} when it means the client closed the
 * connection before the body was complete; returns any other error unchanged.
 */
export function asClientAbort(err: unknown, req: IncomingMessage): unknown {
  if (err instanceof ClientAbort || req.complete) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return (code !== undefined && GONE_CODES.has(code)) || (err as Error | undefined)?.message === "aborted" ? new ClientAbort(err) : err;
}
