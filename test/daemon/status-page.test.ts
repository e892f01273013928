/**
 * The status page, in a real browser: Debian's chromium (installed by .ci/run), driven by
 * playwright-core, against a real daemon child on TCP with an API key. It signs in through the
 * form, reads the row, clicks Download backup and restores the file it got, row by row.
 *
 * TIDEMARK_SCREENSHOT=docs/status-page.png saves the screenshot that docs/operations.md shows.
 */
import fs from "node:fs";
import path from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { request, startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import os from "node:os";
import { rows } from "../helpers/sqlite.js";

const CHROMIUM = "/usr/bin/chromium";
const KEY = "status-page-test-key-0123456789";


async function post(d: DaemonProcess, db: string, version: number, sql: string): Promise<void> {
  const r = await request(d.socket, "POST", `/v1/dbs/${db}/changes`, JSON.stringify({ version, transaction: [sql] }));
  expect(r.status, r.body.toString()).toBe(200);
}

function tcpPort(d: DaemonProcess): number {
  const ready = d.logs().split("\n").find((l) => l.includes('"msg":"ready"'))!;
  return Number(/:(\d+)$/.exec(JSON.parse(ready).tcp)![1]);
}

describe("the status page in a real browser", () => {
  let dir: string;
  let d: DaemonProcess;
  let port: number;
  let browser: Browser;
  let page: Page;
  let betweenVersions3And4: string;

  beforeAll(async () => {
    expect(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`).toBe(true);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-page-"));
    fs.mkdirSync(path.join(dir, "tmp"));
    d = await startDaemon(dir, {
      tcp: { port: 0, apiKey: KEY },
      tmpDir: "tmp",
      rateLimit: { burst: 4, every: "1h" },
      databases: [
        { name: "ledger", backend: "data/ledger", replicas: ["data/ledger-replica"] },
        { name: "audit", backend: "data/audit", compression: "gzip" },
      ],
    });
    port = tcpPort(d);
    await post(d, "ledger", 1, "CREATE TABLE t (x)");
    for (const v of [2, 3]) await post(d, "ledger", v, `INSERT INTO t VALUES (${v - 1})`);
    await new Promise((r) => setTimeout(r, 30));
    betweenVersions3And4 = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 30));
    for (const v of [4, 5, 6]) await post(d, "ledger", v, `INSERT INTO t VALUES (${v - 1})`);
    await post(d, "audit", 1, "CREATE TABLE t (x)");
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1700, height: 420 } });
    page = await context.newPage();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    if (d) expect(await d.stop()).toBe(0);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("shows a login form, and no data, to a browser without the key", async () => {
    const r = await request(port, "GET", "/");
    expect(r.status).toBe(401);
    expect(r.body.toString()).toContain('<form class="login"');
    expect(r.body.toString()).not.toContain("ledger");
    expect((await request(port, "GET", "/v1/dbs")).status).toBe(401);
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.fill("#key", "not-the-key");
    await page.click("button[type=submit]");
    expect(await page.textContent("#banner")).toBe("wrong API key");
    expect(await page.context().cookies()).toEqual([]);
  });

  it("signs in with an HttpOnly, SameSite cookie and shows one row per database", async () => {
    await page.fill("#key", KEY);
    await page.click("button[type=submit]");
    await page.waitForSelector("#db-ledger");
    await page.waitForSelector("#db-audit");
    const [cookie] = await page.context().cookies();
    expect(cookie).toMatchObject({ name: "tidemark_session", httpOnly: true, sameSite: "Strict" });
    expect(cookie!.value).not.toContain(KEY);
    const cell = (db: string, n: number) => page.textContent(`#db-${db} td:nth-child(${n})`);
    expect(await cell("ledger", 2)).toBe("ok");
    expect(await cell("ledger", 3)).toMatch(/^6\d{4}-/);
    expect(await cell("ledger", 5)).toMatch(/^versions 1\.\.6/);
    expect(await cell("ledger", 8)).toMatch(/^nonenot encrypted/);
    expect(await cell("audit", 8)).toMatch(/^gzip/);
    expect(await cell("ledger", 4)).toMatch(/s ago/);
    await page.locator("#db-ledger td:nth-child(9)", { hasText: "0 versions behind" }).waitFor();
  });

  it("downloads the head, a chosen version and a chosen time, each a file that restores", async () => {
    const download = async (fill: Record<string, string>, name: string) => {
      for (const [field, value] of Object.entries(fill)) await page.fill(`#db-ledger input[name=${field}]`, value);
      const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#db-ledger form.download button")]);
      for (const field of Object.keys(fill)) await page.fill(`#db-ledger input[name=${field}]`, "");
      const file = path.join(dir, name);
      await dl.saveAs(file);
      return { file, suggested: dl.suggestedFilename() };
    };
    const head = await download({}, "head.db");
    expect(head.suggested).toBe("ledger-6.db");
    expect(rows(head.file)).toEqual([1, 2, 3, 4, 5]);
    const v3 = await download({ version: "3" }, "v3.db");
    expect(v3.suggested).toBe("ledger-3.db");
    expect(rows(v3.file)).toEqual([1, 2]);
    const t = await download({ time: betweenVersions3And4 }, "t.db");
    expect(t.suggested).toBe("ledger-3.db");
    expect(rows(t.file)).toEqual([1, 2]);
    // Nothing was left in the daemon's temp directories.
    expect(fs.readdirSync(path.join(dir, "tmp"))).toEqual([]);
  });

  it("runs verify now, and refuses a cookie-only POST that did not come from the page", async () => {
    await page.click("#db-ledger button:text('Verify now')");
    await page.locator("#db-ledger .message", { hasText: "verify passed" }).waitFor();
    expect(await page.textContent("#db-ledger .message")).toBe("verify passed: 6 records, restored version 6");
    await page.locator("#db-ledger td:nth-child(11)", { hasText: /^ok, / }).waitFor();
    const cookie = (await page.context().cookies())[0]!;
    const forged = await request(port, "POST", "/v1/dbs/ledger/verify", "", { cookie: `${cookie.name}=${cookie.value}` });
    expect(forged.status).toBe(403);
    expect(forged.json().code).toBe("E_AUTH");
    await page.screenshot({ path: process.env.TIDEMARK_SCREENSHOT ?? path.join(dir, "status-page.png"), fullPage: true });
  });

  it("shows a refused download as a page, with Retry-After once the bucket is empty", async () => {
    // The burst of 4 went on three downloads and a verify.
    const refused = await page.goto(`http://127.0.0.1:${port}/v1/dbs/ledger/backup`);
    expect(refused!.status()).toBe(429);
    expect(refused!.headers()["retry-after"]).toMatch(/^\d+$/);
    expect(await page.textContent("h1")).toMatch(/^429: too many downloads and verifies from this client/);
  });
});
