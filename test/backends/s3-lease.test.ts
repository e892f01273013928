/**
 * The S3 writer lease at the unit level, against an in-memory store that implements
 * If-None-Match and If-Match the way S3, MinIO and R2 do, and an in-memory object server with
 * each quirk the probe must tell apart (a stand-in: one process cannot run AWS, and the quirks
 * are what is under test). The lease against real servers (radosgw, s3rver) is tested in
 * s3-server.test.ts and s3-fencing.test.ts.
 */
import { spawn } from "node:child_process";
import os from "node:os";
import { describe, expect, it } from "vitest";
import { Lease, type LeaseRecord, type LeaseStore } from "../../backends/s3-lease.js";
import { conditionalLeaseStore, describeConditions, probeConditions, type ConditionalPut, type PutCondition } from "../../backends/s3-conditions.js";
import { TidemarkError } from "../../src/util/errors.js";
import { silentLogger } from "../../src/util/logger.js";

/** An object store with S3's conditional-write semantics, for one key. */
class ConditionalStore implements LeaseStore {
  value: { record: LeaseRecord; etag: string } | null = null;
  #n = 0;
  async get() {
    await Promise.resolve();
    return this.value ? { record: this.value.record, etag: this.value.etag } : null;
  }
  async putIfAbsent(record: LeaseRecord) {
    await Promise.resolve();
    if (this.value) return null;
    this.value = { record, etag: `"${++this.#n}"` };
    return this.value.etag;
  }
  async putIfMatch(record: LeaseRecord, etag: string) {
    await Promise.resolve();
    if (!this.value || this.value.etag !== etag) return null;
    this.value = { record, etag: `"${++this.#n}"` };
    return this.value.etag;
  }
  async delete() {
    this.value = null;
  }
}

async function refused(p: Promise<unknown>): Promise<TidemarkError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TidemarkError);
  expect((err as TidemarkError).code).toBe("E_LOCKED");
  return err as TidemarkError;
}

describe("S3 writer lease (in-memory conditional store)", () => {
  it("of two writers racing to acquire, exactly one wins and the other is told who", async () => {
    for (let round = 0; round < 20; round++) {
      const store = new ConditionalStore();
      const a = new Lease(store, "s3://b/p", silentLogger);
      const b = new Lease(store, "s3://b/p", silentLogger);
      const results = await Promise.allSettled([a.acquire(), b.acquire()]);
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      const loser = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
      expect((loser.reason as TidemarkError).message).toMatch(new RegExp(`locked by another writer: PID ${process.pid} on host`));
      await a.release();
      await b.release();
      expect(store.value).toBeNull();
    }
  });

  it("a live lease is refused; an expired one is taken over", async () => {
    const store = new ConditionalStore();
    store.value = { record: { id: "other", pid: 1, host: "elsewhere", expiresAt: Date.now() + 60_000 }, etag: '"x"' };
    const err = await refused(new Lease(store, "s3://b/p", silentLogger).acquire());
    expect(err.message).toContain("PID 1 on host elsewhere");
    expect(err.hint).toMatch(/expires at/);

    store.value = { record: { id: "other", pid: 1, host: "elsewhere", expiresAt: Date.now() - 1 }, etag: '"y"' };
    const lease = new Lease(store, "s3://b/p", silentLogger);
    await lease.acquire();
    expect(store.value.record.pid).toBe(process.pid);
    await lease.release();
  });

  it("a lease whose holder on this host is gone is taken over at once", async () => {
    const child = spawn("true");
    await new Promise((r) => child.on("exit", r));
    const store = new ConditionalStore();
    store.value = { record: { id: "dead", pid: child.pid!, host: os.hostname(), expiresAt: Date.now() + 60_000 }, etag: '"z"' };
    const lease = new Lease(store, "s3://b/p", silentLogger);
    await lease.acquire();
    expect(store.value!.record.pid).toBe(process.pid);
    await lease.release();
  });

  it("a renewal that finds another holder marks the lease lost, and writes must stop", async () => {
    const store = new ConditionalStore();
    const lease = new Lease(store, "s3://b/p", silentLogger, { ttlMs: 60_000 });
    await lease.acquire();
    // Another writer took over (after an expiry this process did not notice).
    store.value = { record: { id: "thief", pid: 4242, host: "other-host", expiresAt: Date.now() + 60_000 }, etag: '"stolen"' };
    await lease.renew();
    expect(lease.lost?.code).toBe("E_LOCKED");
    expect(lease.lost?.message).toMatch(/lost the writer lease .*: PID 4242 on host other-host holds it now/);
    await expect(lease.ensureValid()).rejects.toMatchObject({ code: "E_LOCKED" });
    await lease.release();
    expect(store.value.record.id).toBe("thief"); // not ours to delete
  });

  it("renewal extends the expiry", async () => {
    const store = new ConditionalStore();
    const lease = new Lease(store, "s3://b/p", silentLogger, { ttlMs: 60_000 });
    await lease.acquire();
    const first = store.value!.record.expiresAt;
    await new Promise((r) => setTimeout(r, 5));
    await lease.renew();
    expect(store.value!.record.expiresAt).toBeGreaterThan(first);
    expect(lease.lost).toBeNull();
    await lease.release();
  });

  it("a retried PUT whose first attempt landed is recognised as this writer's own lease", async () => {
    const store = new ConditionalStore();
    const lease = new Lease(store, "s3://b/p", silentLogger, { ttlMs: 60_000 });
    // The acquire's PUT lands, then reports a refusal, as a retry after a lost answer would.
    const putIfAbsent = store.putIfAbsent.bind(store);
    store.putIfAbsent = async (r) => (await putIfAbsent(r), null);
    await lease.acquire();
    expect(store.value!.record.id).toBe(lease.id);
    // The same for a renewal: the object changed, but it is still ours.
    store.value = { record: { ...store.value!.record }, etag: '"changed"' };
    await lease.renew();
    expect(lease.lost).toBeNull();
    await lease.ensureValid();
    await lease.release();
    expect(store.value).toBeNull();
  });

  it("a lease whose validity ran out (a paused writer) is renewed before the next write, or the write is refused", async () => {
    const store = new ConditionalStore();
    const lease = new Lease(store, "s3://b/p", silentLogger, { ttlMs: 1000, marginMs: 100 });
    await lease.acquire();
    await new Promise((r) => setTimeout(r, 1100));
    await lease.ensureValid(); // nobody took it: renewed
    expect(lease.lost).toBeNull();
    store.value = { record: { id: "b", pid: 7, host: "other", expiresAt: Date.now() + 60_000 }, etag: '"b"' };
    await new Promise((r) => setTimeout(r, 1100));
    const err = await refused(lease.ensureValid());
    expect(err.message).toMatch(/PID 7 on host other holds it now/);
  });

  it("the hint of a refusal gives the true expiry, in the future", async () => {
    const store = new ConditionalStore();
    const expiresAt = Date.now() + 20_000;
    store.value = { record: { id: "other", pid: 1, host: "elsewhere", expiresAt }, etag: '"x"' };
    const err = await refused(new Lease(store, "s3://b/p", silentLogger).acquire());
    expect(err.hint).toContain(new Date(expiresAt).toISOString());
    expect(err.hint).toMatch(/in (19|20) s/);
  });
});

/** One object key on an in-memory server with a chosen way of treating conditions. */
function quirkyServer(quirk: "aws" | "rgw" | "none") {
  const objects = new Map<string, { body: string; etag: string }>();
  let n = 0;
  const put: ConditionalPut = async (rel, body, c: PutCondition) => {
    await Promise.resolve();
    const cur = objects.get(rel);
    if (quirk !== "none") {
      if (c.IfNoneMatch === "*" && cur) return null;
      if (c.IfMatch !== undefined && (!cur || (quirk === "aws" ? c.IfMatch.replace(/"/g, "") : c.IfMatch) !== cur.etag.replace(/"/g, "") || (quirk === "rgw" && c.IfMatch.startsWith('"')))) return null;
    }
    const etag = `"${body === cur?.body ? cur.etag.replace(/"/g, "") : `e${++n}`}"`;
    objects.set(rel, { body: String(body), etag });
    return etag;
  };
  const get = async () => {
    const cur = objects.get("lease.json");
    return cur ? { record: JSON.parse(cur.body) as LeaseRecord, etag: cur.etag } : null;
  };
  return { objects, put, get, del: async (rel: string) => void objects.delete(rel) };
}

describe("S3 conditions probe (in-memory servers with each quirk)", () => {
  it("tells AWS-style, RGW-style and condition-ignoring servers apart, and the lease renews on each", async () => {
    const found: Record<string, string> = {};
    for (const quirk of ["aws", "rgw", "none"] as const) {
      const server = quirkyServer(quirk);
      const c = await probeConditions(server.put, server.del);
      found[quirk] = `${c.ifNoneMatch}/${c.ifMatch}`;
      expect([...server.objects.keys()]).toEqual([]); // the probe object is gone
      const store = conditionalLeaseStore(c, server.put, server.get, () => server.del("lease.json"));
      const lease = new Lease(store, "s3://b/p", silentLogger, { ttlMs: 60_000 }, describeConditions(c));
      await lease.acquire();
      for (let i = 0; i < 3; i++) await lease.renew();
      expect(lease.lost, quirk).toBeNull();
      const second = new Lease(store, "s3://b/p", silentLogger);
      await refused(second.acquire());
      await lease.release();
    }
    expect(found).toEqual({ aws: "true/quoted", rgw: "true/unquoted", none: "false/ignored" });
  });
});
