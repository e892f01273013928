/**
 * A Journal host killed between the daemon's ack of a change and its own commit, at that exact
 * point (the host SIGKILLs itself once the ack is in): the next Journal.open rewinds the change
 * the host never committed and carries on. For the very first change (the one that creates the
 * version table) this used to fail with E_STALE: the host database was still empty.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { startDaemon } from "../helpers/daemon.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), "../fixtures");

function run(script: string, args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(FIXTURES, script), ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d));
    child.stderr!.on("data", (d: Buffer) => (out += d));
    child.on("close", (code, signal) => resolve({ code, signal, out }));
  });
}

describe("Journal: killed between the ack and its commit", () => {
  it("at the first change and at a later one, the next open rewinds the uncommitted change; nothing is lost or replayed", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, null);
    const host = path.join(dir, "host.db");
    try {
      const first = await run("journal-dies-after-ack.mjs", [d.socket, host, "1"]);
      expect(first.signal, first.out).toBe("SIGKILL");
      expect(first.out).toContain("acked 1");
      const backup = path.join(dir, "tidemark-data", "default");
      expect(JSON.parse((await runCli(["status", backup, "--json"])).stdout).version).toBe(1);

      // The next start: before the fix, Journal.open threw E_STALE here.
      const next = await run("journal-host.mjs", [d.socket, host, "+3"]);
      expect(next.code, next.out).toBe(0);
      expect(next.out).toMatch(/^open 1\n/);
      expect(next.out).toContain("committed 4\n");

      // The same at a later change: the backup is one ahead of the host, and is rewound.
      const later = await run("journal-dies-after-ack.mjs", [d.socket, host, "5"]);
      expect(later.signal, later.out).toBe("SIGKILL");
      expect(later.out).toContain("acked 5");
      const again = await run("journal-host.mjs", [d.socket, host, "+2"]);
      expect(again.code, again.out).toBe(0);
      expect(again.out).toMatch(/^open 4\n/);
      expect(again.out).toContain("committed 6\n");

      const out = path.join(dir, "restored.db");
      const r = await runCli(["restore", backup, out]);
      expect(r.code, r.stderr).toBe(0);
      expectSameDb(out, host);
    } finally {
      await d.stop();
    }
  });
});
