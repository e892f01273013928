import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { request, spoolReasons, startDaemon, waitFor } from "../helpers/daemon.js";
import { fileSizes, tmpDir } from "../helpers/tmp.js";

const change = (version: number, ...sql: string[]) => JSON.stringify({ version, transaction: sql });



const config = { spool: "spool", databases: [{ name: "default", backend: "data" }] };

describe("the spool door: snapshots are checked, an identical retry is taken as unchanged", () => {
  it("rejects a snapshot_path with random bytes after a valid header, and one cut short, with a .reason; nothing durable changes", async () => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    const d = await startDaemon(dir, config, { TIDEMARK_SHADOW_DIR: shadows });
    const spool = path.join(dir, "spool");
    const data = path.join(dir, "data");
    try {
      expect((await request(d.socket, "POST", "/v1/dbs/default/changes", change(1, "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"))).status).toBe(200);
      const before = fileSizes(data);
      const { errors: _none, ...statusBefore } = (await request(d.socket, "GET", "/v1/dbs/default")).json();

      const junk = path.join(dir, "junk.db");
      fs.writeFileSync(junk, Buffer.concat([Buffer.from("SQLite format 3\0", "latin1"), Buffer.from(Array.from({ length: 8176 }, (_, i) => (i * 7919 + 13) % 256))]));
      fs.writeFileSync(path.join(spool, "default", "5.json"), JSON.stringify({ version: 5, snapshot_path: junk }));
      await waitFor(() => spoolReasons(spool).length === 1, 10_000, d.logs);
      expect(spoolReasons(spool)[0]).toMatch(/^E_INPUT: snapshot of version 5: /);

      const src = path.join(dir, "src.db");
      const db = new Database(src);
      db.exec("CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t SELECT i FROM n");
      db.close();
      const size = fs.statSync(src).size;
      const cut = path.join(dir, "cut.db");
      fs.writeFileSync(cut, fs.readFileSync(src).subarray(0, 4096));
      fs.writeFileSync(path.join(spool, "default", "5.json"), JSON.stringify({ version: 5, snapshot_path: cut }));
      await waitFor(() => spoolReasons(spool).length === 2, 10_000, d.logs);
      expect(spoolReasons(spool)[1]).toMatch(new RegExp(`^E_INPUT: snapshot of version 5: header says ${size / 4096} pages of 4096 bytes = ${size}, file has 4096\\nTry: `));

      expect(fileSizes(data)).toEqual(before);
      // Only the list of recent errors changes: the refusals are listed there.
      const { errors, ...statusAfter } = (await request(d.socket, "GET", "/v1/dbs/default")).json();
      expect(statusAfter).toEqual(statusBefore);
      expect(errors.map((e: { message: string }) => e.message)).toEqual([expect.stringMatching(/^snapshot of version 5: /), expect.stringMatching(/^snapshot of version 5: header says/)]);
      expect(fs.readdirSync(path.join(shadows, "tmp"))).toEqual([]);
      expect(fs.existsSync(path.join(spool, "default", "5.json"))).toBe(false);

      // The whole file is taken from the spool as a new base.
      fs.writeFileSync(path.join(spool, "default", "5.json"), JSON.stringify({ version: 5, snapshot_path: src }));
      await waitFor(() => !fs.existsSync(path.join(spool, "default", "5.json")), 10_000, d.logs);
      expect(spoolReasons(spool)).toHaveLength(2);
      expect((await request(d.socket, "GET", "/v1/dbs/default")).json().version).toBe(5);
    } finally {
      await d.stop();
    }
  });

  it("takes a spooled retry identical to the head as unchanged: the file is consumed and the log does not grow; a different one is a redo", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, config, { TIDEMARK_SHADOW_DIR: path.join(dir, "shadows") });
    const spool = path.join(dir, "spool");
    const data = path.join(dir, "data");
    const next = (v: number) => path.join(spool, "default", `${v}.json`);
    try {
      fs.writeFileSync(next(1), change(1, "CREATE TABLE t (x)"));
      await waitFor(() => !fs.existsSync(next(1)), 10_000, d.logs);
      fs.writeFileSync(next(2), change(2, "INSERT INTO t VALUES (2)"));
      await waitFor(() => !fs.existsSync(next(2)), 10_000, d.logs);
      const before = fileSizes(data);

      // The host's retry of the file it wrote (it did not see it disappear in time).
      fs.writeFileSync(next(2), change(2, "INSERT INTO t VALUES (2)"));
      await waitFor(() => !fs.existsSync(next(2)), 10_000, d.logs);
      expect(fs.readdirSync(path.join(spool, "rejected"))).toEqual([]);
      expect(fileSizes(data)).toEqual(before);

      // Different content for the head is a redo, one record that replaces it.
      fs.writeFileSync(next(2), change(2, "INSERT INTO t VALUES (-2)"));
      await waitFor(() => !fs.existsSync(next(2)), 10_000, d.logs);
      const r = await request(d.socket, "GET", "/v1/dbs/default/backup");
      expect(r.status).toBe(200);
      fs.writeFileSync(path.join(dir, "out.db"), r.body);
      const out = new Database(path.join(dir, "out.db"), { readonly: true });
      expect(out.prepare("SELECT x FROM t").pluck().all()).toEqual([-2]);
      out.close();
    } finally {
      await d.stop();
    }
  });
});
