/**
 * The daemon's `watch:` per database: a python3 program that knows nothing of tidemark writes,
 * the daemon captures it into its primary and a replica, and both restore row for row.
 */
import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { request, startDaemon, waitFor } from "../helpers/daemon.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { runApp, startApp } from "../helpers/watch.js";

describe("daemon watch:", () => {
  it("captures a watched database into its primary and replica; SQL changes to it are refused", async () => {
    const dir = tmpDir();
    const db = path.join(dir, "app.db");
    await runApp("python", [db, "1"]);
    // The application runs beside the daemon, its database open throughout.
    const app = startApp("python", [db, "0", "--pace", "10"]);
    const daemon = await startDaemon(dir, {
      socket: "tidemark.sock",
      databases: [{ name: "app", backend: "./primary", replicas: ["./replica"], watch: "./app.db" }],
    });
    try {
      await waitFor(() => app.committed.length >= 60, 20_000);
      app.child.kill("SIGKILL");
      await app.done;
      await waitFor(async () => {
        const s = (await request(daemon.socket, "GET", "/v1/dbs/app")).json();
        return s.capture?.lagTransactions === 0 && s.replicas[0]?.lagVersions === 0 && s.version > 1;
      }, 20_000, daemon.logs);
      const s = (await request(daemon.socket, "GET", "/v1/dbs/app")).json();
      expect(s.capture).toMatchObject({ db, lagTransactions: 0 });
      expect(s.capture.walBytes).toBeGreaterThan(0);
      expect(s.settings.capture).toBe(true);
      const refused = await request(daemon.socket, "POST", "/v1/dbs/app/changes", JSON.stringify({ version: s.version + 1, transaction: ["CREATE TABLE u (x)"] }));
      expect(refused.status).toBe(409);
      expect(refused.json().error.code ?? refused.json().code).toBe("E_MODE");
    } finally {
      expect(await daemon.stop()).toBe(0);
    }
    for (const backup of ["primary", "replica"]) {
      const dest = path.join(dir, `${backup}.db`);
      const r = await runCli(["restore", path.join(dir, backup), dest]);
      expect(r.code, r.stderr).toBe(0);
      expectSameDb(dest, db);
    }
    expect(fs.existsSync(path.join(dir, "primary", "tidemark.json"))).toBe(true);
  });
});
