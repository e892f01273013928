/**
 * The status page's routes: `GET /` (the page, or a login form for a browser without the key),
 * `POST /login` and `POST /logout` (the session cookie), and `GET /ui/*` (its CSS and script,
 * which hold no data and are served to anyone who can reach the listener).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { clearedSessionCookie, type ApiAuth } from "./api-auth.js";
import { APP_JS, STYLE_CSS, errorPageHtml, loginPageHtml, statusPageHtml } from "./status-page-assets.js";
import { PACKAGE_VERSION } from "../util/package-version.js";
import type { TokenBuckets } from "./rate-limit.js";

/** Sign-in attempts per client: 10 at once, then one a minute, so a key cannot be guessed at speed. */
export const LOGIN_LIMIT = { burst: 10, everyMs: 60_000 };

/** Largest login form accepted, in bytes. */
const MAX_FORM_BYTES = 4096;

/** Headers for every page: nothing from elsewhere runs, and nothing is cached or framed. */
const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

const ASSETS: Record<string, { type: string; body: string }> = {
  "/ui/app.js": { type: "text/javascript; charset=utf-8", body: APP_JS },
  "/ui/style.css": { type: "text/css; charset=utf-8", body: STYLE_CSS },
};

/**
 * Serves the request if it is one of the page's routes; returns false when it is not.
 * `auth` is the TCP listener's key check (undefined on the Unix socket, which needs none);
 * `authorised` says whether this request already passed it.
 */
export async function servePage(
  req: IncomingMessage,
  res: ServerResponse,
  pathname: string,
  auth: ApiAuth | undefined,
  authorised: boolean,
  logins: TokenBuckets,
): Promise<boolean> {
  const asset = ASSETS[pathname];
  if (asset && req.method === "GET") {
    res.writeHead(200, { "content-type": asset.type, "cache-control": "no-cache", "x-content-type-options": "nosniff" });
    res.end(asset.body);
    return true;
  }
  if (pathname === "/" && req.method === "GET") {
    sendPage(res, authorised ? 200 : 401, authorised ? statusPageHtml(PACKAGE_VERSION) : loginPageHtml(false));
    return true;
  }
  if (pathname === "/login" && req.method === "POST") {
    const key = new URLSearchParams(await readForm(req)).get("key") ?? "";
    const waitMs = auth ? logins.take(req.socket.remoteAddress ?? "unix socket") : 0;
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000);
      res.setHeader("retry-after", String(seconds));
      sendPage(res, 429, errorPageHtml(429, "too many sign-in attempts from this address", `retry in ${seconds} s`));
      return true;
    }
    if (auth && !auth.matches(key)) {
      sendPage(res, 401, loginPageHtml(true));
      return true;
    }
    res.writeHead(303, { location: "/", "cache-control": "no-store", ...(auth && { "set-cookie": auth.sessionCookie() }) });
    res.end();
    return true;
  }
  if (pathname === "/logout" && req.method === "POST") {
    res.writeHead(303, { location: "/", "set-cookie": clearedSessionCookie(), "cache-control": "no-store" });
    res.end();
    return true;
  }
  return false;
}

/** True when a browser navigated to the URL (so an error is better shown as a page than as JSON). */
export function isNavigation(req: IncomingMessage): boolean {
  return req.method === "GET" && (req.headers["sec-fetch-mode"] === "navigate" || /\btext\/html\b/.test(req.headers.accept ?? ""));
}

/** Sends an error as a page, for a browser that navigated. */
export function sendErrorPage(res: ServerResponse, status: number, message: string, hint: string | undefined): void {
  sendPage(res, status, errorPageHtml(status, message, hint));
}

function sendPage(res: ServerResponse, status: number, html: string): void {
  res.writeHead(status, { ...PAGE_HEADERS, "content-length": Buffer.byteLength(html) });
  res.end(html);
}

async function readForm(req: IncomingMessage): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) break;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}
