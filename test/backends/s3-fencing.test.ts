/**
 * The S3 writer lease and fencing against this run's real S3 server: s3rver in `npm test`
 * (which ignores conditional PUTs), radosgw in `.ci/run` (which honours `If-None-Match` and
 * matches `If-Match` only against unquoted ETags). Writers are real CLI processes, frozen with
 * SIGSTOP and killed with SIGKILL.
 */
import path from "node:path";
import os from "node:os";
import type { ChildProcess } from "node:child_process";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyChange } from "../../src/ops/ingest.js";
import { openBackend } from "../../src/backup/registry.js";
import { runCli, spawnCli } from "../helpers/cli.js";
import { EXTERNAL_S3, startS3, type S3Server } from "../helpers/s3.js";
import { tmpDir } from "../helpers/tmp.js";

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3.stop();
});

const create = { version: 1, transaction: ["CREATE TABLE t (v INTEGER, who TEXT)"] };
const row = (v: number, who: string) => ({ version: v, transaction: [{ sql: "INSERT INTO t VALUES (?, ?)", params: [v, who] }] });
const line = (c: object) => `${JSON.stringify(c)}\n`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const prefixOf = (location: string) => decodeURIComponent(new URL(location).pathname).replace(/^\/+|\/+$/g, "");

/** An ingest child that stays open, and the versions it acknowledged. */
function writer(location: string): { child: ChildProcess; acks: number[]; stderr: () => string; acked(v: number): Promise<void>; exited: Promise<number | null> } {
  const child = spawnCli(["ingest", location]);
  const acks: number[] = [];
  let err = "";
  let buf = "";
  child.stdout!.on("data", (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      acks.push(JSON.parse(buf.slice(0, nl)).version);
      buf = buf.slice(nl + 1);
    }
  });
  child.stderr!.on("data", (d: Buffer) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  return {
    child,
    acks,
    stderr: () => err,
    async acked(v) {
      while (!acks.includes(v)) {
        if (child.exitCode !== null) throw new Error(`the writer exited (${child.exitCode}) before acknowledging ${v}: ${err}`);
        await sleep(10);
      }
    },
    exited,
  };
}

async function restoredRows(location: string): Promise<unknown[]> {
  const out = path.join(tmpDir(), "restored.db");
  const r = await runCli(["restore", location, out]);
  expect(r.code, r.stderr).toBe(0);
  const db = new Database(out, { readonly: true });
  try {
    return db.prepare("SELECT v || ' ' || who FROM t ORDER BY v").pluck().all();
  } finally {
    db.close();
  }
}

async function leaseOf(location: string): Promise<{ id: string; pid: number; host: string; expiresAt: number; fencing?: string } | undefined> {
  const bytes = await s3.getObject(`${prefixOf(location)}/lease.json`);
  return bytes && JSON.parse(bytes.toString("utf8"));
}

describe(`S3 lease and fencing (${EXTERNAL_S3 ? (process.env.TIDEMARK_TEST_S3_NAME ?? "external") : "s3rver"})`, () => {
  it("status names the writer and what the server does with conditional writes, as probed at open", async () => {
    const location = s3.location();
    expect((await runCli(["init", location])).code).toBe(0);
    const a = writer(location);
    a.child.stdin!.write(line(create));
    await a.acked(1);
    const r = await runCli(["status", location, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const { writer: w } = JSON.parse(r.stdout);
    expect(w.holder).toBe(`PID ${a.child.pid} on host ${os.hostname()}`);
    expect(w.expiresAt).toBeGreaterThan(Date.now());
    const name = EXTERNAL_S3 ? process.env.TIDEMARK_TEST_S3_NAME : "s3rver";
    if (name === "radosgw") expect(w.fencing).toBe("If-None-Match honoured, If-Match honoured with unquoted ETags only: lease and fencing enforced by the server");
    if (name === "s3rver") expect(w.fencing).toMatch(/^If-None-Match ignored, If-Match ignored: NOT fenced: .*one writer at a time is the operator's promise$/);
    const text = await runCli(["status", location]);
    expect(text.stdout).toMatch(/^writer {6}PID \d+ on host .*, lease until \d{4}-/m);
    expect(text.stdout).toMatch(/^fencing {5}If-None-Match /m);
    a.child.stdin!.end();
    expect(await a.exited).toBe(0);
    expect(await leaseOf(location)).toBeUndefined();
  });

  it("a writer keeps its own lease through many renewals, and every change it acknowledged restores", async () => {
    // A 1 s lease renews every 333 ms: 4 s of slow changes cross a dozen renewals.
    const location = `${s3.location()}&lease=1s`;
    expect((await runCli(["init", location])).code).toBe(0);
    const a = writer(location);
    a.child.stdin!.write(line(create));
    for (let v = 2; v <= 21; v++) {
      await sleep(200);
      a.child.stdin!.write(line(row(v, "a")));
      await a.acked(v);
    }
    a.child.stdin!.end();
    expect(await a.exited, a.stderr()).toBe(0);
    expect(a.stderr()).not.toMatch(/lost the writer lease/);
    expect(await restoredRows(location)).toHaveLength(20);
  });

  it("a killed writer's lease is taken at once on the same host; one from another host, once it expires, with a true hint meanwhile", async () => {
    const location = `${s3.location()}&lease=1h`;
    expect((await runCli(["init", location])).code).toBe(0);
    const a = writer(location);
    a.child.stdin!.write(line(create));
    await a.acked(1);
    a.child.kill("SIGKILL");
    await a.exited;
    // The lease lasts an hour, but its holder is gone: taken over at once.
    const b = await runCli(["ingest", location], { input: line(row(2, "b")) });
    expect(b.code, b.stderr).toBe(0);

    // A lease of a writer on another host, that stops renewing.
    const expiresAt = Date.now() + 4000;
    await s3.putObject(`${prefixOf(location)}/lease.json`, JSON.stringify({ id: "elsewhere", pid: 4242, host: "other-host", expiresAt }));
    const refused = await runCli(["ingest", location], { input: line(row(3, "c")) });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^Error: .* is locked by another writer: PID 4242 on host other-host$/m);
    expect(refused.stderr).toContain(`its lease expires at ${new Date(expiresAt).toISOString()} (in `);
    while (Date.now() <= expiresAt) await sleep(100);
    const c = await runCli(["ingest", location], { input: line(row(3, "c")) });
    expect(c.code, c.stderr).toBe(0);
    expect(await restoredRows(location)).toEqual(["2 b", "3 c"]);
  });

  it("a writer frozen past its lease (SIGSTOP) is refused when it resumes; the writer that took over keeps its acknowledged change", async () => {
    const location = `${s3.location()}&lease=2s`;
    expect((await runCli(["init", location])).code).toBe(0);
    const a = writer(location);
    a.child.stdin!.write(line(create) + line(row(2, "a")));
    await a.acked(2);
    a.child.kill("SIGSTOP");
    try {
      const holder = await leaseOf(location);
      while (Date.now() <= holder!.expiresAt) await sleep(100);
      // B takes the expired lease over and acknowledges 3, and holds the backup.
      const b = writer(location);
      b.child.stdin!.write(line(row(3, "b")));
      await b.acked(3);
      // A resumes and tries its own 3: refused, nothing of it stored.
      a.child.kill("SIGCONT");
      a.child.stdin!.write(line(row(3, "a")));
      a.child.stdin!.end();
      expect(await a.exited).not.toBe(0);
      expect(a.acks).toEqual([1, 2]);
      expect(a.stderr()).toMatch(/^Error: .*(lost the writer lease|another writer wrote)/m);
      expect(a.stderr()).toMatch(/^Try: .*another writer took over/m);
      b.child.stdin!.write(line(row(4, "b")));
      await b.acked(4);
      b.child.stdin!.end();
      expect(await b.exited, b.stderr()).toBe(0);
    } finally {
      a.child.kill("SIGCONT");
    }
    expect(await restoredRows(location)).toEqual(["2 a", "3 b", "4 b"]);
  });

  it.runIf(EXTERNAL_S3)("a writer that has not noticed losing its lease cannot overwrite the next writer's acknowledged change: If-None-Match fences it", async () => {
    const location = `${s3.location()}&lease=1h`;
    await (await openBackend(location, { mode: "create" })).close();
    const a = await openBackend(location, { mode: "write" });
    await applyChange(a, create);
    await applyChange(a, row(2, "a"));
    // A's lease is replaced behind its back by one that has expired (as after a long pause that A's
    // clock did not see: A still trusts its lease), and B takes that over.
    await s3.putObject(`${prefixOf(location)}/lease.json`, JSON.stringify({ id: "gone", pid: 1, host: "other-host", expiresAt: Date.now() - 1 }));
    const b = await openBackend(location, { mode: "write" });
    await applyChange(b, row(3, "b"));
    const err = await applyChange(a, row(3, "a")).then(
      () => null,
      (e: unknown) => e as { code: string; message: string; hint?: string },
    );
    expect(err?.code).toBe("E_LOCKED");
    expect(err?.message).toMatch(/another writer wrote log\/0000000001\/\d{10}\.tml: this writer lost the backup/);
    await expect(applyChange(a, row(3, "a"))).rejects.toMatchObject({ code: "E_LOCKED" });
    await a.close();
    await applyChange(b, row(4, "b"));
    await b.close();
    expect(await restoredRows(location)).toEqual(["2 a", "3 b", "4 b"]);
  });
});
