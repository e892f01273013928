/**
 * Torn and corrupt files: bytes flipped or files cut at random offsets. Every outcome must be a
 * clean recovery (a restore that equals the host at the version it reports) or a precise error,
 * never a wrong database.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../src/backend-registry.js";
import type { Statement } from "../src/change.js";
import { compact } from "../src/compaction.js";
import { TidemarkError } from "../src/errors.js";
import { applyChange } from "../src/ingest.js";
import { restore } from "../src/restore.js";
import { applyStatements, expectSameDb } from "./helpers/sqlite.js";
import { tmpDir } from "./helpers/tmp.js";
import { Rng, Workload } from "./helpers/workload.js";

describe("torn and corrupt backup files", () => {
  it("random damage yields a clean recovery or a precise error, never a wrong database", async () => {
    const dir = tmpDir();
    const pristine = path.join(dir, "pristine");
    const history: Statement[][] = [];
    const work = new Workload(5);
    const b = await openBackend(pristine, { mode: "create" });
    for (let v = 1; v <= 80; v++) {
      const st = work.transaction();
      history.push(st);
      await applyChange(b, { version: v, transaction: st });
      if (v === 50) await compact(b); // so that a snapshot blob exists
    }
    await b.close();

    const refs = new Map<number, string>();
    const referenceAt = (version: number): string => {
      let file = refs.get(version);
      if (file) return file;
      file = path.join(dir, `ref-${version}.db`);
      const db = new Database(file);
      for (let v = 1; v <= version; v++) applyStatements(db, history[v - 1]!);
      db.close();
      refs.set(version, file);
      return file;
    };

    const rng = new Rng(77);
    const outcomes = { recovered: 0, errors: 0 };
    for (let trial = 0; trial < 60; trial++) {
      const copy = path.join(dir, `trial-${trial}`);
      fs.cpSync(pristine, copy, { recursive: true });
      const files = fs.readdirSync(copy).filter((n) => n.endsWith(".tml") || n.endsWith(".tms"));
      const victim = path.join(copy, rng.pick(files));
      const bytes = fs.readFileSync(victim);
      const at = rng.int(0, bytes.length - 1);
      let damage: string;
      if (rng.chance(0.3)) {
        fs.writeFileSync(victim, bytes.subarray(0, at));
        damage = `cut ${path.basename(victim)} at ${at}`;
      } else {
        const n = rng.int(1, 4);
        for (let i = 0; i < n && at + i < bytes.length; i++) bytes[at + i]! ^= rng.int(1, 255);
        fs.writeFileSync(victim, bytes);
        damage = `flipped ${n} bytes of ${path.basename(victim)} at ${at}`;
      }

      const dest = path.join(dir, `out-${trial}.db`);
      try {
        const r = await openBackend(copy, { mode: "read" });
        try {
          const result = await restore(r, dest);
          expectSameDb(dest, referenceAt(result.version));
          expect(result.version, damage).toBeGreaterThanOrEqual(50);
          outcomes.recovered++;
        } finally {
          await r.close();
        }
      } catch (err) {
        if (!(err instanceof TidemarkError)) throw new Error(`${damage}: ${(err as Error).stack}`);
        expect(["E_CORRUPT", "E_RANGE"], `${damage}: ${err.message}`).toContain(err.code);
        if (err.code === "E_CORRUPT") expect(err.message, damage).toContain(path.basename(victim));
        expect(fs.existsSync(dest), damage).toBe(false);
        outcomes.errors++;
      }
    }
    expect(outcomes.recovered).toBeGreaterThan(5);
    expect(outcomes.errors).toBeGreaterThan(5);
  });
});
