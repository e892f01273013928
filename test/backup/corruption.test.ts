/**
 * Torn and corrupt files: bytes flipped or files cut at random offsets. Every outcome must be a
 * clean recovery (a restore that equals the host at the version it reports) or a precise error,
 * never a wrong database.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import type { Statement } from "../../src/model/change.js";
import { compact } from "../../src/ops/compaction.js";
import { TidemarkError } from "../../src/util/errors.js";
import { applyChange } from "../../src/ops/ingest.js";
import { restore } from "../../src/ops/restore.js";
import { runCli } from "../helpers/cli.js";
import { applyStatements, expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { Rng, Workload } from "../helpers/workload.js";

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

  it("damage inside the live log: readers get what precedes it, and nothing claims to be the head", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    const b = await openBackend(backup, { mode: "create", retention: { bases: 2 } });
    const history: Statement[][] = [];
    const work = new Workload(11);
    for (let v = 1; v <= 30; v++) {
      const st = work.transaction();
      history.push(st);
      await applyChange(b, { version: v, timestamp: Date.parse("2026-11-20T00:00:00Z") + v * 60_000, transaction: st });
      if (v === 10) await compact(b); // an older generation (1..10) and a live one from base 9
    }
    await b.close();
    const reference = (version: number) => {
      const file = path.join(dir, `ref-${version}.db`);
      const db = new Database(file);
      for (let v = 1; v <= version; v++) applyStatements(db, history[v - 1]!);
      db.close();
      return file;
    };
    // Damage the body of version 20's record in the live log (the newest log file).
    const live = path.join(backup, fs.readdirSync(backup).filter((n) => n.endsWith(".tml")).sort().at(-1)!);
    const bytes = fs.readFileSync(live);
    const offsets: number[] = [];
    for (let i = bytes.indexOf("TDMK"); i >= 0; i = bytes.indexOf("TDMK", i + 1)) offsets.push(i);
    const at = offsets[20 - 9]!; // the base (version 9) is the first record, then 10, 11, ...
    bytes[at + 30]! ^= 0x55;
    fs.writeFileSync(live, bytes);
    const run = (args: string[]) => runCli(args);

    const status = await run(["status", backup]);
    expect(status.code).toBe(1);
    expect(status.stdout).toMatch(/^head\s+unknown: damaged after version 19$/m);
    expect(status.stdout).toMatch(new RegExp(`^DAMAGED\\s+.*${path.basename(live)}, offset ${at}, version 20: .*; restorable up to version 19 only$`, "m"));
    expect(status.stderr).toMatch(/^Try: tidemark restore --version 19 \(or earlier\) restores what precedes the damage/m);

    const verify = await run(["verify", backup]);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toMatch(new RegExp(`^FAULT E_CORRUPT: .*${path.basename(live)}, offset ${at}, version 20: .*\\(readable up to version 19; nothing after it\\)$`, "m"));

    const head = await run(["restore", backup, path.join(dir, "head.db")]);
    expect(head.code).toBe(1);
    expect(head.stderr).toMatch(/its head is unknown, because nothing after version 19 can be read/);
    expect(fs.existsSync(path.join(dir, "head.db"))).toBe(false);
    const late = await run(["restore", backup, path.join(dir, "late.db"), "--time", "2026-11-20T00:25:00Z"]);
    expect(late.code).toBe(1);
    expect(late.stderr).toMatch(/the version as of 2026-11-20T00:25:00.000Z is unknown/);
    const copy = await run(["copy", backup, path.join(dir, "copy")]);
    expect(copy.code).toBe(1);
    expect(copy.stderr).toMatch(/the head a copy would end at is unknown/);
    expect(fs.existsSync(path.join(dir, "copy"))).toBe(false);

    // What precedes the damage restores, in both generations; the backup is untouched.
    for (const v of [5, 15, 19]) {
      const out = path.join(dir, `v${v}.db`);
      const r = await run(["restore", backup, out, "--version", String(v), "-q"]);
      expect(r.code, r.stderr).toBe(0);
      expectSameDb(out, reference(v));
    }
    const early = await run(["restore", backup, path.join(dir, "early.db"), "--time", "2026-11-20T00:12:30Z", "--json"]);
    expect(early.code, early.stderr).toBe(0);
    expect(JSON.parse(early.stdout).version).toBe(12);
    expect(fs.readFileSync(live).equals(bytes)).toBe(true);
  });

  describe("damage next to a rewind, at the start of the live log, in an older generation", () => {
    const recordOffsets = (file: string) => {
      const bytes = fs.readFileSync(file);
      const out: number[] = [];
      for (let i = bytes.indexOf("TDMK"); i >= 0; i = bytes.indexOf("TDMK", i + 1)) out.push(i);
      return out;
    };
    const flip = (file: string, at: number) => {
      const bytes = fs.readFileSync(file);
      bytes[at]! ^= 0x55;
      fs.writeFileSync(file, bytes);
    };
    const logs = (dir: string) => fs.readdirSync(dir).filter((n) => n.endsWith(".tml")).sort().map((n) => path.join(dir, n));
    const rowsOf = (file: string) => {
      const db = new Database(file, { readonly: true });
      try {
        return db.prepare("SELECT x FROM t ORDER BY x").pluck().all();
      } finally {
        db.close();
      }
    };
    const insert = (x: number) => [`INSERT INTO t VALUES (${x})`];

    it("a damaged record after a rewindable head does not vouch for that head", async () => {
      const dir = tmpDir();
      const backup = path.join(dir, "backup");
      const b = await openBackend(backup, { mode: "create" });
      await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x INTEGER)"] });
      for (let v = 2; v <= 5; v++) await applyChange(b, { version: v, transaction: insert(v) });
      await b.rewind(); // the host never committed 5 ...
      for (const [v, x] of [[5, 500], [6, 600], [7, 700]] as const) await applyChange(b, { version: v, transaction: insert(x) });
      await b.close();
      // ... and the rewind record (the sixth record) is what gets damaged.
      const [log] = logs(backup);
      flip(log!, recordOffsets(log!)[5]! + 30);
      const status = await runCli(["status", backup, "--json"]);
      expect(status.code).toBe(1);
      expect(JSON.parse(status.stdout)).toMatchObject({ version: 4, damage: { intactVersion: 4 } });
      const old5 = await runCli(["restore", backup, path.join(dir, "v5.db"), "--version", "5"]);
      expect(old5.code).toBe(1);
      expect(fs.existsSync(path.join(dir, "v5.db"))).toBe(false);
      const v4 = await runCli(["restore", backup, path.join(dir, "v4.db"), "--version", "4"]);
      expect(v4.code, v4.stderr).toBe(0);
      expect(rowsOf(path.join(dir, "v4.db"))).toEqual([2, 3, 4]);
    });

    it("damage at the start of the live log leaves the older generation readable", async () => {
      const dir = tmpDir();
      const backup = path.join(dir, "backup");
      const b = await openBackend(backup, { mode: "create", retention: { bases: 1 } });
      await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x INTEGER)"] });
      for (let v = 2; v <= 8; v++) await applyChange(b, { version: v, transaction: insert(v) });
      await compact(b); // older generation 1..8, live from base 7
      for (let v = 9; v <= 10; v++) await applyChange(b, { version: v, transaction: insert(v) });
      await b.close();
      const live = logs(backup).at(-1)!;
      flip(live, 30); // the live base record
      const status = await runCli(["status", backup, "--json"]);
      expect(status.code).toBe(1);
      expect(JSON.parse(status.stdout)).toMatchObject({ version: 8, damage: { intactVersion: 8 } });
      const v6 = await runCli(["restore", backup, path.join(dir, "v6.db"), "--version", "6"]);
      expect(v6.code, v6.stderr).toBe(0);
      expect(rowsOf(path.join(dir, "v6.db"))).toEqual([2, 3, 4, 5, 6]);
      const verify = await runCli(["verify", backup]);
      expect(verify.code).toBe(1);
      expect(verify.stdout).toMatch(/^FAULT E_CORRUPT: .*readable up to version 8; nothing after it\)$/m);
    });

    it("damage in an older generation does not stop the head from restoring; verify reports it", async () => {
      const dir = tmpDir();
      const backup = path.join(dir, "backup");
      const b = await openBackend(backup, { mode: "create", retention: { bases: 1 } });
      await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x INTEGER)"] });
      for (let v = 2; v <= 8; v++) await applyChange(b, { version: v, transaction: insert(v) });
      await compact(b);
      for (let v = 9; v <= 10; v++) await applyChange(b, { version: v, transaction: insert(v) });
      await b.close();
      const older = logs(backup)[0]!;
      flip(older, recordOffsets(older)[3]! + 30); // version 4
      const status = await runCli(["status", backup]);
      expect(status.code, status.stderr).toBe(0);
      expect(status.stdout).toMatch(/^generations\s+no base: 1\.\.3, from \S+ \(DAMAGED after version 3: .*version 4: .*\); base 7: 7\.\.10, from \S+ \(live\)$/m);
      const lost = await runCli(["restore", backup, path.join(dir, "v5.db"), "--version", "5"]);
      expect(lost.code).toBe(1);
      expect(lost.stderr).toMatch(/^Error: version 5 cannot be read: .*version 4: /m);
      expect(lost.stderr).toMatch(/^Try: versions up to 3 of that generation restore/m);
      const head = await runCli(["restore", backup, path.join(dir, "head.db")]);
      expect(head.code, head.stderr).toBe(0);
      expect(rowsOf(path.join(dir, "head.db"))).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const verify = await runCli(["verify", backup]);
      expect(verify.code).toBe(1);
      expect(verify.stdout).toMatch(/^FAULT E_CORRUPT: .*version 4: .*\(the generation from version 1 is readable up to version 3\)$/m);
    });
  });
});
