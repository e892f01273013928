/**
 * The API key check for the daemon's TCP listener: a key header (`X-API-Key`, or
 * `Authorization: Bearer`), or the status page's session cookie that the login form sets.
 * Every comparison is constant-time, of SHA-256 digests, so neither content nor length leaks.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

/** The cookie the login form sets. */
export const SESSION_COOKIE = "tidemark_session";
/** How long a sign-in lasts, in seconds. */
const SESSION_SECONDS = 12 * 3600;

/** How a request proved it holds the key. */
export type AuthMethod = "key" | "cookie";

/** Checks requests against one API key. */
export class ApiAuth {
  readonly #key: Buffer;
  readonly #session: Buffer;
  readonly #token: string;

  constructor(apiKey: string) {
    this.#key = digest(apiKey);
    // The cookie carries a value derived from the key, not the key: it opens this daemon's
    // page and API, and stops working when the key changes.
    this.#token = createHmac("sha256", apiKey).update("tidemark status page session v1").digest("base64url");
    this.#session = digest(this.#token);
  }

  /** How the request is authorised, or null when it is not. */
  check(req: IncomingMessage): AuthMethod | null {
    const header = req.headers["x-api-key"];
    const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "")?.[1];
    const given = typeof header === "string" ? header : bearer;
    if (given !== undefined) return this.matches(given) ? "key" : null;
    const cookie = readCookie(req, SESSION_COOKIE);
    return cookie !== undefined && timingSafeEqual(digest(cookie), this.#session) ? "cookie" : null;
  }

  /** True when `given` is the key. */
  matches(given: string): boolean {
    return timingSafeEqual(digest(given), this.#key);
  }

  /** The Set-Cookie value that signs a browser in: HttpOnly, SameSite=Strict. */
  sessionCookie(): string {
    return `${SESSION_COOKIE}=${this.#token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_SECONDS}`;
  }
}

/** The Set-Cookie value that signs a browser out. */
export function clearedSessionCookie(): string {
  return `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`;
}

function readCookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}
