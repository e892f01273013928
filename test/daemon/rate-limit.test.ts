import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { buildConfig } from "../../src/daemon/config.js";
import { TokenBuckets } from "../../src/daemon/rate-limit.js";
import { request, startDaemon } from "../helpers/daemon.js";

describe("token buckets", () => {
  it("give each client a burst, then one request per interval", () => {
    const b = new TokenBuckets({ burst: 5, everyMs: 60_000 });
    const t0 = 1_000_000;
    for (let i = 0; i < 5; i++) expect(b.take("a", t0)).toBe(0);
    expect(b.take("a", t0)).toBe(60_000);
    expect(b.take("b", t0)).toBe(0); // another client has its own bucket
    expect(b.take("a", t0 + 59_000)).toBe(1000);
    expect(b.take("a", t0 + 60_000)).toBe(0);
    expect(b.take("a", t0 + 60_000)).toBe(60_000);
    // A client that waits long enough gets the whole burst back, and no more.
    for (let i = 0; i < 5; i++) expect(b.take("a", t0 + 3_600_000)).toBe(0);
    expect(b.take("a", t0 + 3_600_000)).toBeGreaterThan(0);
  });

  it("are off with a burst of 0", () => {
    const b = new TokenBuckets({ burst: 0, everyMs: 60_000 });
    for (let i = 0; i < 100; i++) expect(b.take("a")).toBe(0);
  });

  it("default to a burst of 5, then one a minute, and take compound durations", () => {
    const base = { databases: [{ name: "a", backend: "/tmp/x" }] };
    expect(buildConfig(base, "/", "test").rateLimit).toEqual({ burst: 5, everyMs: 60_000 });
    expect(buildConfig({ ...base, rateLimit: { burst: 2, every: "1h30m" } }, "/", "test").rateLimit).toEqual({ burst: 2, everyMs: 5_400_000 });
  });
});

describe("the rate limit on the daemon's socket", () => {
  it("refuses downloads and verify-now over the burst with 429 and Retry-After, and serves the page without a key", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-rate-"));
    const d = await startDaemon(dir, { rateLimit: { burst: 2, every: "10m" }, databases: [{ name: "main", backend: "data/main" }] });
    try {
      await request(d.socket, "POST", "/v1/dbs/main/changes", JSON.stringify({ version: 1, transaction: ["CREATE TABLE t (x)"] }));
      expect((await request(d.socket, "GET", "/v1/dbs/main/backup")).status).toBe(200);
      expect((await request(d.socket, "POST", "/v1/dbs/main/verify")).status).toBe(200);
      const refused = await request(d.socket, "GET", "/v1/dbs/main/backup");
      expect(refused.status).toBe(429);
      expect(Number(refused.headers["retry-after"])).toBeGreaterThan(500);
      expect(Number(refused.headers["retry-after"])).toBeLessThanOrEqual(600);
      expect(refused.json()).toMatchObject({
        code: "E_RATE_LIMIT",
        error: "too many downloads and verifies from this client (a download was refused): 2 at once, then one every 10m",
      });
      expect(refused.json().hint).toMatch(/^retry in \d+ s, or raise rateLimit in the daemon config$/);
      expect((await request(d.socket, "POST", "/v1/dbs/main/verify")).status).toBe(429);
      // Status is not limited.
      expect((await request(d.socket, "GET", "/v1/dbs/main")).status).toBe(200);
      const page = await request(d.socket, "GET", "/");
      expect(page.status).toBe(200);
      expect(page.headers["content-security-policy"]).toMatch(/script-src 'self'/);
      expect(page.body.toString()).toContain('<script src="/ui/app.js" defer>');
      expect((await request(d.socket, "GET", "/ui/app.js")).body.toString()).toContain("Download backup");
    } finally {
      expect(await d.stop()).toBe(0);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("sign-in attempts on TCP", () => {
  it("are limited per address: 10, then 429 with Retry-After, the right key included", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-login-"));
    const d = await startDaemon(dir, { tcp: { port: 0, apiKey: "the-right-key-0123456789" }, databases: [{ name: "main", backend: "data/main" }] });
    try {
      const ready = JSON.parse(d.logs().split("\n").find((l) => l.includes('"msg":"ready"'))!);
      const port = Number(/:(\d+)$/.exec(ready.tcp)![1]);
      const login = (key: string) => request(port, "POST", "/login", `key=${encodeURIComponent(key)}`, { "content-type": "application/x-www-form-urlencoded" });
      for (let i = 0; i < 10; i++) expect((await login(`guess-${i}`)).status).toBe(401);
      const limited = await login("the-right-key-0123456789");
      expect(limited.status).toBe(429);
      expect(Number(limited.headers["retry-after"])).toBeGreaterThan(0);
      expect(limited.headers["set-cookie"]).toBeUndefined();
      expect(limited.body.toString()).toContain("too many sign-in attempts from this address");
      // The key header is not a sign-in: scripts are not locked out.
      expect((await request(port, "GET", "/v1/dbs", undefined, { "x-api-key": "the-right-key-0123456789" })).status).toBe(200);
    } finally {
      expect(await d.stop()).toBe(0);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
