import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import { applyChange } from "../../src/ops/ingest.js";
import { replayInto } from "../../src/ops/replay.js";
import { TidemarkError } from "../../src/util/errors.js";
import { applyStatements, expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { Rng, Workload } from "../helpers/workload.js";

// A short restore runs SQLite on the calling thread, a long one (and every compaction) in the
// replay worker: both must build the same database and fail the same way.
describe("replay on the calling thread and in the worker", () => {
  for (const seed of [11, 12]) {
    it(`random workload ${seed} (a base, params, redos and rewinds) replays the same both ways`, async () => {
      const dir = tmpDir();
      const rng = new Rng(seed);
      const work = new Workload(seed);
      const host = new Database(path.join(dir, "host.db"));
      const b = await openBackend(path.join(dir, "backup"), { mode: "create" });
      applyStatements(host, work.transaction(6));
      await host.backup(path.join(dir, "base.db"));
      await applyChange(b, { version: 10, snapshot: fs.createReadStream(path.join(dir, "base.db")) });
      let version = 10;
      for (let i = 0; i < 300; i++) {
        if (rng.chance(0.05)) {
          await applyChange(b, { version: version + 1, transaction: [`CREATE TABLE rolled_back_${i} (x)`] });
          if (rng.chance(0.5)) await b.rewind();
        }
        const statements = work.transaction();
        await applyChange(b, { version: version + 1, transaction: statements });
        applyStatements(host, statements);
        version++;
      }
      host.close();
      for (const inline of [true, false]) {
        const out = path.join(dir, `replayed-${inline}.db`);
        const replayed = await replayInto(b, out, { inline });
        expect(replayed.version).toBe(version);
        expect(replayed.changes).toBe(version - 10 + 1);
        expect(await replayed.db.integrityCheck()).toEqual(["ok"]);
        await replayed.db.close();
        expectSameDb(out, path.join(dir, "host.db"));
      }
      await b.close();
    });
  }

  it("names the same failing version and statement both ways, and leaves the stream's reader closed", async () => {
    const dir = tmpDir();
    const b = await openBackend(path.join(dir, "backup"), { mode: "create" });
    await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x UNIQUE)"] });
    // Stored as they are (no check by a shadow), as an older tidemark stored them.
    for (let v = 2; v <= 3000; v += 500) {
      const batch = [];
      for (let w = v; w < v + 500 && w <= 3000; w++) batch.push({ version: w, timestamp: Date.now(), transaction: [`INSERT INTO t VALUES (${w})`, `INSERT INTO t VALUES (${w === 2500 ? 7 : -w})`] });
      await b.addChanges(batch);
    }
    const messages: string[] = [];
    for (const inline of [true, false]) {
      const err = await replayInto(b, path.join(dir, `out-${inline}.db`), { inline }).then(
        () => new Error("expected a failure"),
        (e: unknown) => e as Error,
      );
      expect(err).toBeInstanceOf(TidemarkError);
      expect((err as TidemarkError).code).toBe("E_RESTORE");
      messages.push(err.message);
    }
    // The failing statement's SQL comes back from the SQLite side (the sender keeps no copy).
    expect(messages[0]).toContain("replaying version 2500, statement 1 failed: UNIQUE constraint failed: t.x: INSERT INTO t VALUES (7)");
    expect(messages[1]).toBe(messages[0]);
    // A reader still open would hold the backend's readers count up: close() then waits for none.
    await b.close();
  });
});
