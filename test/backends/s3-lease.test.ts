/**
 * The S3 writer lease at the unit level. The S3-compatible server the tests run (s3rver)
 * ignores conditional PUTs, and none that honours them can be run here, so the lease runs
 * against an in-memory store that implements If-None-Match and If-Match the way S3, MinIO and
 * R2 do. The rest of the S3 backend is tested against s3rver itself.
 */
import { spawn } from "node:child_process";
import os from "node:os";
import { describe, expect, it } from "vitest";
import { Lease, type LeaseRecord, type LeaseStore } from "../../backends/s3-lease.js";
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
    const lease = new Lease(store, "s3://b/p", silentLogger, 60_000);
    await lease.acquire();
    // Another writer took over (after an expiry this process did not notice).
    store.value = { record: { id: "thief", pid: 4242, host: "other-host", expiresAt: Date.now() + 60_000 }, etag: '"stolen"' };
    await lease.renew();
    expect(lease.lost?.code).toBe("E_LOCKED");
    expect(lease.lost?.message).toMatch(/lost the writer lease .* to PID 4242 on host other-host/);
    await lease.release();
    expect(store.value.record.id).toBe("thief"); // not ours to delete
  });

  it("renewal extends the expiry", async () => {
    const store = new ConditionalStore();
    const lease = new Lease(store, "s3://b/p", silentLogger, 60_000);
    await lease.acquire();
    const first = store.value!.record.expiresAt;
    await new Promise((r) => setTimeout(r, 5));
    await lease.renew();
    expect(store.value!.record.expiresAt).toBeGreaterThan(first);
    expect(lease.lost).toBeNull();
    await lease.release();
  });
});
