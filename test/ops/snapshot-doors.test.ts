import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import { backendSink } from "../../src/host/journal.js";
import { closeShadow } from "../../src/ops/ingest.js";
import { runCli } from "../helpers/cli.js";
import { fileSizes, tmpDir } from "../helpers/tmp.js";
import { buildDbak, type DbakRecordSpec } from "../fixtures/cln/dbak-writer.js";

/** A valid 16-byte header and then `length` bytes that are not a database. */
function junk(length: number): Buffer {
  return Buffer.concat([Buffer.from("SQLite format 3\0", "latin1"), Buffer.from(Array.from({ length }, (_, i) => (i * 7919 + 13) % 256))]);
}

/** A SQLite file of several pages, and its size. */
function database(file: string): number {
  const db = new Database(file);
  db.exec("CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t SELECT i FROM n");
  db.close();
  return fs.statSync(file).size;
}


describe("a bad snapshot is refused through the Journal's sink and cln import", () => {
  it("backendSink.addSnapshot (how a Journal seeds an empty backup) refuses random bytes after a header and a file cut short; nothing is stored", async () => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    const saved = process.env.TIDEMARK_SHADOW_DIR;
    process.env.TIDEMARK_SHADOW_DIR = shadows;
    const location = path.join(dir, "backup");
    const backend = await openBackend(location, { mode: "create" });
    try {
      const sink = backendSink(backend);
      const before = fileSizes(location);
      fs.writeFileSync(path.join(dir, "junk.db"), junk(8176));
      await expect(sink.addSnapshot(1, path.join(dir, "junk.db"))).rejects.toMatchObject({ code: "E_INPUT", message: expect.stringMatching(/^snapshot of version 1: /) });
      const size = database(path.join(dir, "src.db"));
      fs.writeFileSync(path.join(dir, "cut.db"), fs.readFileSync(path.join(dir, "src.db")).subarray(0, 4096));
      await expect(sink.addSnapshot(1, path.join(dir, "cut.db"))).rejects.toMatchObject({
        code: "E_INPUT",
        message: `snapshot of version 1: header says ${size / 4096} pages of 4096 bytes = ${size}, file has 4096`,
      });
      expect(backend.head().version).toBe(0);
      expect(fileSizes(location)).toEqual(before);
      expect(fs.readdirSync(path.join(shadows, "tmp"))).toEqual([]);
      // The whole file seeds the backup.
      await sink.addSnapshot(1, path.join(dir, "src.db"));
      expect(backend.head().version).toBe(1);
    } finally {
      closeShadow(backend);
      await backend.close();
      if (saved === undefined) delete process.env.TIDEMARK_SHADOW_DIR;
      else process.env.TIDEMARK_SHADOW_DIR = saved;
    }
  });

  it("cln import refuses a snapshot record with random bytes after a header, and one cut short, naming the record; the records before it stay, no temp file is left", async () => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    const env = { TIDEMARK_SHADOW_DIR: shadows };
    const size = database(path.join(dir, "src.db"));
    const history: DbakRecordSpec[] = [
      { version: 1, transaction: ["CREATE TABLE t (v INTEGER)"] },
      { version: 2, transaction: ["INSERT INTO t VALUES (2)"] },
    ];
    const cases: [string, Buffer, RegExp][] = [
      ["junk", junk(8176), /snapshot of version 3: /],
      ["cut", fs.readFileSync(path.join(dir, "src.db")).subarray(0, 4096), new RegExp(`snapshot of version 3: header says ${size / 4096} pages of 4096 bytes = ${size}, file has 4096`)],
    ];
    for (const [name, snapshot, message] of cases) {
      const file = path.join(dir, `${name}.dbak`);
      fs.writeFileSync(file, buildDbak([...history, { version: 3, snapshot }]).bytes);
      const backup = path.join(dir, name);
      const r = await runCli(["cln", "import", file, backup], { env });
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toContain("version 3");
      const status = await runCli(["status", backup, "--json"]);
      expect(JSON.parse(status.stdout)).toMatchObject({ version: 2, records: 2 });
      expect(fs.readdirSync(path.join(shadows, "tmp"))).toEqual([]);
    }
  });
});
