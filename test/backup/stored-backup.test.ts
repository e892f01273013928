/**
 * The core at the moments a real storage makes hard to hit on purpose: a synchronous append
 * during a compaction's switch, and a switch whose outcome is unknown. The file backend does the
 * work; a thin wrapper (the only stand-in here) holds or fails the one call the moment hinges on.
 */
import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createStorage as fileStorage } from "../../backends/file.js";
import { openBackend, registerBackend } from "../../src/backup/registry.js";
import { isSyncBackend, type SyncBackend } from "../../src/backup/backup.js";
import type { StagedGeneration, Storage } from "../../src/backup/storage.js";
import { applyChange, applyChangeSync } from "../../src/ops/ingest.js";
import { TidemarkError } from "../../src/util/errors.js";
import { collect, tx } from "../helpers/backend-conformance.js";
import { tmpDir } from "../helpers/tmp.js";

/**
 * What the wrapper does to the next switch: the commit of a staged generation (how the file
 * backend switches), or a createGeneration.
 */
const hooks: { createGeneration?: (real: () => Promise<void>) => Promise<void>; staged?: () => Promise<void> } = {};

registerBackend("held", async (url, options) => {
  const inner: Storage = await fileStorage(new URL(`file://${url.pathname}`), options);
  return new Proxy(inner, {
    get(target, key) {
      if (key === "createGeneration" && hooks.createGeneration) {
        const hook = hooks.createGeneration;
        return (id: number, bytes: Buffer) => hook(() => target.createGeneration(id, bytes));
      }
      if (key === "stageGeneration") {
        return async (id: number, bytes: Buffer): Promise<StagedGeneration> => {
          const staged = await target.stageGeneration!(id, bytes);
          await hooks.staged?.();
          return {
            commit: (more) => (hooks.createGeneration ? hooks.createGeneration(() => staged.commit(more)) : staged.commit(more)),
            discard: () => staged.discard(),
          };
        };
      }
      const v = (target as unknown as Record<string | symbol, unknown>)[key];
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
});

async function seeded(versions: number): Promise<string> {
  const dir = path.join(tmpDir(), "backup");
  const b = await openBackend(`held://${dir}`, { mode: "create" });
  await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (v INTEGER, tag TEXT)"] });
  for (let v = 2; v <= versions; v++) await applyChange(b, { version: v, transaction: tx(v) });
  await b.close();
  return dir;
}

describe("backup core: compaction's switch", () => {
  it("a synchronous append while a compaction switches generations is refused, never acknowledged and lost", async () => {
    const dir = await seeded(5);
    const opened = await openBackend(`held://${dir}`, { mode: "write" });
    expect(isSyncBackend(opened)).toBe(true);
    const b = opened as SyncBackend;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let reached!: () => void;
    const atSwitch = new Promise<void>((r) => (reached = r));
    hooks.createGeneration = async (real) => {
      reached();
      await held;
      await real();
    };
    try {
      const compaction = b.compact({ version: 4, timestamp: 4, snapshot: async function* () { yield Buffer.from("four"); } });
      await atSwitch;
      const err = (() => {
        try {
          applyChangeSync(b, { version: 6, transaction: tx(6) });
        } catch (e) {
          return e as TidemarkError;
        }
        throw new Error("expected a refusal");
      })();
      expect(err.code).toBe("E_UNAVAILABLE");
      release();
      await compaction;
    } finally {
      hooks.createGeneration = undefined;
    }
    applyChangeSync(b, { version: 6, transaction: tx(6) });
    await b.close();
    const r = await openBackend(`held://${dir}`, { mode: "read" });
    expect((await collect(r, { from: 4 })).map((c) => c.version)).toEqual([4, 5, 6]);
    await r.close();
  });

  it("a switch whose outcome is unknown keeps the new base: the backup restores to the same head", async () => {
    const dir = await seeded(5);
    const b = await openBackend(`held://${dir}`, { mode: "write" });
    // The new generation is written, then the call fails (a lost answer, a failed fsync).
    hooks.createGeneration = async (real) => {
      await real();
      throw new Error("EIO after the rename");
    };
    try {
      await expect(b.compact({ version: 4, timestamp: 4, snapshot: async function* () { yield Buffer.from("four"); } })).rejects.toThrow(/failed half-way/);
    } finally {
      hooks.createGeneration = undefined;
    }
    await expect(applyChange(b, { version: 6, transaction: tx(6) })).rejects.toThrow(/switching to the new generation failed half-way/);
    await b.close();
    expect(fs.readdirSync(dir).filter((n) => n.endsWith(".tms"))).toHaveLength(1);
    const w = await openBackend(`held://${dir}`, { mode: "write" });
    expect(w.head()).toEqual({ version: 5, prevVersion: 4 });
    const got = await collect(w, { from: 4 });
    expect(got.map((c) => c.version)).toEqual([4, 5]);
    expect(got[0]!.snapshot?.toString()).toBe("four");
    await w.close();
  });

  it("changes acknowledged while the tail is copied are not held up, and are in the new generation", async () => {
    const dir = await seeded(5);
    const b = await openBackend(`held://${dir}`, { mode: "write" });
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let reached!: () => void;
    const atStaged = new Promise<void>((r) => (reached = r));
    hooks.staged = async () => {
      reached();
      await held;
    };
    try {
      const compaction = b.compact({ version: 4, timestamp: 4, snapshot: async function* () { yield Buffer.from("four"); } });
      await atStaged;
      // The copy so far is staged and compaction waits: writers still get their acks.
      await applyChange(b, { version: 6, transaction: tx(6) });
      await applyChange(b, { version: 7, transaction: tx(7) });
      release();
      await compaction;
    } finally {
      hooks.staged = undefined;
    }
    await applyChange(b, { version: 8, transaction: tx(8) });
    await b.close();
    expect(fs.readdirSync(dir).filter((n) => n.startsWith("log-") && n.endsWith(".tml"))).toEqual(["log-0000000002.tml"]);
    const r = await openBackend(`held://${dir}`, { mode: "read" });
    const got = await collect(r, { from: 4 });
    expect(got.map((c) => c.version)).toEqual([4, 5, 6, 7, 8]);
    expect(got[0]!.snapshot?.toString()).toBe("four");
    expect(got[3]!.transaction).toEqual(tx(7));
    await r.close();
  });
});
