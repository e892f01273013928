import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { request, spoolReasons, startDaemon, type DaemonProcess, waitFor } from "../helpers/daemon.js";
import { tmpDir } from "../helpers/tmp.js";

const change = (version: number, sql: string) => JSON.stringify({ version, transaction: [sql] });


/** A request that fails after `ms` instead of waiting for a daemon that is stuck. */
function within<T>(ms: number, p: Promise<T>): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${ms} ms: the daemon is stuck`)), ms))]);
}

/** Stops the daemon; one stuck on a file gets SIGKILL rather than hanging the test. */
async function stop(d: DaemonProcess): Promise<void> {
  const timer = setTimeout(() => d.child.kill("SIGKILL"), 10_000);
  await d.stop();
  clearTimeout(timer);
}

describe("the spool takes regular files only", () => {
  it("rejects a FIFO named like the next file, and answers /healthz and other databases meanwhile", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, {
      spool: "spool",
      databases: [
        { name: "default", backend: "data/default" },
        { name: "other", backend: "data/other" },
      ],
    });
    const spool = path.join(dir, "spool");
    try {
      // Nobody ever opens the FIFO for writing: a read of it would wait forever.
      execFileSync("mkfifo", [path.join(spool, "default", "1.json")]);
      // Give the sweep (every second) time to find it before asking the daemon anything.
      await new Promise((r) => setTimeout(r, 1_500));
      expect((await within(5_000, request(d.socket, "GET", "/healthz"))).status).toBe(200);
      const other = await within(5_000, request(d.socket, "POST", "/v1/dbs/other/changes", change(1, "CREATE TABLE t (x)")));
      expect(other.status).toBe(200);
      await waitFor(() => spoolReasons(spool).length === 1, 10_000, d.logs);
      expect(spoolReasons(spool)[0]).toMatch(/^E_INPUT: spool file \S+\/default\/1\.json is a FIFO, not a regular file; it was not read\nTry: /);
      expect(fs.existsSync(path.join(spool, "default", "1.json"))).toBe(false);
      const moved = fs.readdirSync(path.join(spool, "rejected")).find((n) => n.endsWith(".json"))!;
      expect(fs.lstatSync(path.join(spool, "rejected", moved)).isFIFO()).toBe(true);

      // The spool carries on with the next regular file for that version.
      fs.writeFileSync(path.join(spool, "default", "1.json"), change(1, "CREATE TABLE t (x)"));
      await waitFor(() => !fs.existsSync(path.join(spool, "default", "1.json")), 10_000, d.logs);
      expect((await request(d.socket, "GET", "/v1/dbs/default")).json().version).toBe(1);
    } finally {
      await stop(d);
    }
  });

  it("rejects symbolic links (to /dev/zero, to a regular file elsewhere) and directories, unread and unfollowed", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, { spool: "spool", databases: [{ name: "default", backend: "data" }] });
    const spool = path.join(dir, "spool");
    const next = path.join(spool, "default", "1.json");
    try {
      fs.symlinkSync("/dev/zero", next);
      await waitFor(() => spoolReasons(spool).length === 1, 10_000, d.logs);
      expect(spoolReasons(spool)[0]).toMatch(/^E_INPUT: spool file \S+ is a symbolic link, not a regular file; it was not read/);

      // A link to a good change elsewhere is refused too: the spool never reads through a link.
      const elsewhere = path.join(dir, "elsewhere.json");
      fs.writeFileSync(elsewhere, change(1, "CREATE TABLE t (x)"));
      fs.symlinkSync(elsewhere, next);
      await waitFor(() => spoolReasons(spool).length === 2, 10_000, d.logs);
      expect(spoolReasons(spool)[1]).toMatch(/is a symbolic link, not a regular file/);
      // The link was moved aside; its target is untouched.
      expect(fs.readFileSync(elsewhere, "utf8")).toBe(change(1, "CREATE TABLE t (x)"));
      expect((await request(d.socket, "GET", "/v1/dbs/default")).json().version).toBe(0);

      fs.mkdirSync(next);
      await waitFor(() => spoolReasons(spool).length === 3, 10_000, d.logs);
      expect(spoolReasons(spool)[2]).toMatch(/is a directory, not a regular file/);
      expect(fs.existsSync(next)).toBe(false);

      fs.writeFileSync(next, change(1, "CREATE TABLE t (x)"));
      await waitFor(() => !fs.existsSync(next), 10_000, d.logs);
      expect((await request(d.socket, "GET", "/v1/dbs/default")).json().version).toBe(1);
    } finally {
      await stop(d);
    }
  });

  it("takes a snapshot_path only if it is a regular file: a FIFO or a link is rejected, a file is a new base", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, { spool: "spool", databases: [{ name: "default", backend: "data" }] });
    const spool = path.join(dir, "spool");
    const next = path.join(spool, "default", "1.json");
    const sqlite = path.join(dir, "base.db");
    const db = new Database(sqlite);
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (42)");
    db.close();
    const fifo = path.join(dir, "base.fifo");
    execFileSync("mkfifo", [fifo]);
    const link = path.join(dir, "base-link.db");
    fs.symlinkSync(sqlite, link);
    try {
      fs.writeFileSync(next, JSON.stringify({ version: 1, snapshot_path: fifo }));
      await new Promise((r) => setTimeout(r, 1_500));
      expect((await within(5_000, request(d.socket, "GET", "/healthz"))).status).toBe(200);
      await waitFor(() => spoolReasons(spool).length === 1, 10_000, d.logs);
      expect(spoolReasons(spool)[0]).toMatch(/^E_INPUT: snapshot_path \S+base\.fifo is a FIFO, not a regular file/);

      fs.writeFileSync(next, JSON.stringify({ version: 1, snapshot_path: link }));
      await waitFor(() => spoolReasons(spool).length === 2, 10_000, d.logs);
      expect(spoolReasons(spool)[1]).toMatch(/^E_INPUT: snapshot_path \S+base-link\.db is a symbolic link, not a regular file/);
      expect((await request(d.socket, "GET", "/v1/dbs/default")).json().version).toBe(0);

      fs.writeFileSync(next, JSON.stringify({ version: 1, snapshot_path: sqlite }));
      await waitFor(() => !fs.existsSync(next), 10_000, d.logs);
      expect(spoolReasons(spool)).toHaveLength(2);
      const restored = path.join(dir, "restored.db");
      const r = await request(d.socket, "GET", "/v1/dbs/default/backup");
      expect(r.status).toBe(200);
      fs.writeFileSync(restored, r.body);
      const out = new Database(restored, { readonly: true });
      expect(out.prepare("SELECT x FROM t").pluck().all()).toEqual([42]);
      out.close();
    } finally {
      await stop(d);
    }
  });
});
