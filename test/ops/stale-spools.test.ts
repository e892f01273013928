import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { startDaemon } from "../helpers/daemon.js";
import { tmpDir } from "../helpers/tmp.js";

/** The pid of a process that has exited (a real one, run to its end). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  return Number(r.stdout);
}

/** Temp files as a crash mid-snapshot leaves them, one of a live process, and one of another name. */
function litter(tmp: string): { stale: string[]; kept: string[] } {
  fs.mkdirSync(tmp, { recursive: true, mode: 0o700 });
  const dead = deadPid();
  const stale = [`snapshot-${dead}-1700000000000-abc123.db`, `snapshot-${dead}-1700000000000-abc123.db.state`];
  const kept = [`snapshot-${process.pid}-1700000000000-live1.db`, "notes.txt"];
  for (const name of [...stale, ...kept]) fs.writeFileSync(path.join(tmp, name), "x".repeat(4096), { mode: 0o600 });
  return { stale, kept };
}

describe("snapshot temp files left by a crash are swept", () => {
  it("by the daemon at start: those of a process that is gone; a live process's and other names stay", async () => {
    const dir = tmpDir();
    const tmp = path.join(dir, "shadows", "tmp");
    const { kept } = litter(tmp);
    const d = await startDaemon(dir, { shadowDir: "shadows", databases: [{ name: "default", backend: "data" }] });
    try {
      expect(fs.readdirSync(tmp).sort()).toEqual([...kept].sort());
      expect(d.logs()).toMatch(/removed 2 snapshot temp file\(s\) left by a process that is gone/);
    } finally {
      expect(await d.stop()).toBe(0);
    }
  });

  it("by ingest, when it first spools a snapshot into the shadow directory", async () => {
    const dir = tmpDir();
    const shadows = path.join(dir, "shadows");
    const { kept } = litter(path.join(shadows, "tmp"));
    const backup = path.join(dir, "backup");
    expect((await runCli(["init", backup])).code).toBe(0);
    const src = path.join(dir, "src.db");
    const db = new Database(src);
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
    db.close();
    const r = await runCli(["ingest", backup], { input: `${JSON.stringify({ version: 1, snapshot_path: src })}\n`, env: { TIDEMARK_SHADOW_DIR: shadows } });
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readdirSync(path.join(shadows, "tmp")).sort()).toEqual([...kept].sort());
  });
});
