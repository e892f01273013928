import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { request, startDaemon, waitFor } from "../helpers/daemon.js";
import { tmpDir } from "../helpers/tmp.js";

const change = (version: number, sql: string) => JSON.stringify({ version, transaction: [sql] });

/** Every path under `root` (itself included), with its mode bits, as "relative-path mode". */
function modes(root: string, mask = 0o7777): string[] {
  const out: string[] = [];
  const walk = (p: string) => {
    const st = fs.lstatSync(p);
    out.push(`${path.relative(root, p) || "."} ${st.isDirectory() ? "dir" : st.isSocket() ? "socket" : "file"} ${(st.mode & mask).toString(8)}`);
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) walk(path.join(p, n));
  };
  walk(root);
  return out;
}

/** Runs `fn` with the process umask set to `mask`: children spawned meanwhile inherit it. */
async function withUmask<T>(mask: number, fn: () => Promise<T>): Promise<T> {
  const old = process.umask(mask);
  try {
    return await fn();
  } finally {
    process.umask(old);
  }
}

/** A group that exists on this machine (the test runs as root, so the daemon may use any). */
function someGroup(): { name: string; gid: number } {
  for (const name of ["nogroup", "daemon", "users"]) {
    try {
      const line = execFileSync("getent", ["group", name], { encoding: "utf8" });
      return { name, gid: Number(line.split(":")[2]) };
    } catch {
      // not on this machine
    }
  }
  throw new Error("no group nogroup, daemon or users on this machine");
}

describe("private by default", () => {
  it.each([
    ["0022", 0o022],
    ["0000", 0o000],
  ])("under umask %s, every backup path is 0700/0600, and so are the spool, the socket and the daemon's temp dir", async (_, mask) => {
    const dir = tmpDir();
    const d = await withUmask(mask, () =>
      startDaemon(dir, {
        spool: "spool",
        tmpDir: "tmp",
        databases: [{ name: "default", backend: "state/backups/default", compaction: { everyChanges: 1_000_000 } }],
      }),
    );
    try {
      for (let v = 1; v <= 4; v++) {
        expect((await request(d.socket, "POST", "/v1/dbs/default/changes", change(v, v === 1 ? "CREATE TABLE t (x)" : `INSERT INTO t VALUES (${v})`))).status).toBe(200);
      }
      // A snapshot blob and a second generation, by compaction; a refused spool file.
      expect((await request(d.socket, "POST", "/v1/dbs/default/compact")).status).toBe(200);
      await request(d.socket, "POST", "/v1/dbs/default/changes", change(5, "INSERT INTO t VALUES (5)"));
      fs.writeFileSync(path.join(dir, "spool", "default", "6.json"), "{not json");
      await waitFor(() => fs.readdirSync(path.join(dir, "spool", "rejected")).length === 2, 10_000, d.logs);

      const backup = modes(path.join(dir, "state"));
      expect(backup.filter((l) => l.includes(" dir ")).every((l) => l.endsWith(" 700")), backup.join("\n")).toBe(true);
      expect(backup.filter((l) => l.includes(" file ")).every((l) => l.endsWith(" 600")), backup.join("\n")).toBe(true);
      expect(backup.some((l) => /^backups\/default\/snap-\S+ file 600$/.test(l)), backup.join("\n")).toBe(true);
      expect(backup.filter((l) => /log-\d+\.tml/.test(l)), backup.join("\n")).toHaveLength(2);
      const spool = modes(path.join(dir, "spool"));
      expect(spool.filter((l) => l.includes(" dir ")), spool.join("\n")).toEqual([". dir 700", "default dir 700", "rejected dir 700"]);
      // The reason the daemon wrote is private; the refused file keeps the mode its host gave it.
      expect(spool.filter((l) => l.includes(".reason")).map((l) => l.split(" ").slice(1).join(" "))).toEqual(["file 600"]);
      expect(modes(path.join(dir, "tmp"))).toEqual([". dir 700"]);
      expect(modes(d.socket, 0o777)).toEqual([". socket 600"]);
    } finally {
      await d.stop();
    }
    // The CLI's init makes the same backups.
    await withUmask(mask, async () => {
      const db = path.join(dir, "host.db");
      new Database(db).exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)").close();
      const r = await runCli(["init", "--from-db", db, "--version", "1", path.join(dir, "cli/new/backup")]);
      expect(r.code, r.stderr).toBe(0);
    });
    const cli = modes(path.join(dir, "cli"));
    expect(cli.filter((l) => !/ (dir 700|file 600)$/.test(l)), cli.join("\n")).toEqual([]);
  });

  it("with group:, the socket is 0660 and the spool 2770 of that group, and the daemon's reasons 0640", async () => {
    const group = someGroup();
    const dir = tmpDir();
    const d = await withUmask(0o022, () => startDaemon(dir, { spool: "spool", group: group.name, databases: [{ name: "default", backend: "data" }] }));
    try {
      const sock = fs.statSync(d.socket);
      expect([sock.gid, (sock.mode & 0o777).toString(8)]).toEqual([group.gid, "660"]);
      for (const sub of ["", "default", "rejected"]) {
        const st = fs.statSync(path.join(dir, "spool", sub));
        expect([sub, st.gid, (st.mode & 0o7777).toString(8)]).toEqual([sub, group.gid, "2770"]);
      }
      fs.writeFileSync(path.join(dir, "spool", "default", "1.json"), "{not json");
      await waitFor(() => fs.readdirSync(path.join(dir, "spool", "rejected")).length === 2, 10_000, d.logs);
      const reason = fs.readdirSync(path.join(dir, "spool", "rejected")).find((n) => n.endsWith(".reason"))!;
      const st = fs.statSync(path.join(dir, "spool", "rejected", reason));
      expect([st.gid, (st.mode & 0o777).toString(8)]).toEqual([group.gid, "640"]);
      // The backups stay private: the group reaches the doors, not the data.
      expect(modes(path.join(dir, "data")).filter((l) => !/ (dir 700|file 600)$/.test(l))).toEqual([]);
      expect((await request(d.socket, "GET", "/healthz")).status).toBe(200);
    } finally {
      await d.stop();
    }
  });

  it.each(["tidemark.service", "tidemark@.service"])("%s documents the group: the config key and the drop-in it takes", (name) => {
    const text = fs.readFileSync(path.join(import.meta.dirname, "../../systemd", name), "utf8");
    expect(text).toMatch(/^# .*group: tidemark-clients/m);
    expect(text).toMatch(/^#\s+SupplementaryGroups=tidemark-clients$/m);
    expect(text).toMatch(/^#\s+PrivateUsers=no$/m);
    expect(text).toMatch(/^#\s+ReadWritePaths=\/var\/spool\/tidemark/m);
  });

  it("refuses an unknown group at config load with a hint, and takes a group number", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "bad.yaml"), "group: no-such-group-tidemark\ndatabases:\n  - { name: default, backend: data }\n");
    const r = await runCli(["daemon", "--config", path.join(dir, "bad.yaml")]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/group: no group named "no-such-group-tidemark" on this host/);
    expect(r.stderr).toMatch(/Try: create it \(groupadd no-such-group-tidemark\)/);
    expect(fs.existsSync(path.join(dir, "data"))).toBe(false);

    const group = someGroup();
    const d = await startDaemon(dir, { group: group.gid, databases: [{ name: "default", backend: "data" }] });
    try {
      expect(fs.statSync(d.socket).gid).toBe(group.gid);
    } finally {
      await d.stop();
    }
  });
});
