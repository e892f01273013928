/**
 * End to end with real processes: a daemon child, and a host child that writes through the
 * Journal. Either or both are SIGKILLed at random moments, restarted, and the host reconciles
 * and carries on. At the end `tidemark restore` must equal the host's database row by row.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { Rng } from "../helpers/workload.js";

const HOST = path.join(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/journal-host.mjs");
const ROUNDS = 24;
const TARGET = 100_000;

interface Host {
  child: ChildProcess;
  out: string;
  committed: number;
}

function startHost(socket: string, db: string, target: number | string): Host {
  const child = spawn(process.execPath, [HOST, socket, db, String(target)], { stdio: ["ignore", "pipe", "pipe"] });
  const host: Host = { child, out: "", committed: 0 };
  child.stdout!.on("data", (d: Buffer) => {
    host.out += d;
    const m = /committed (\d+)\n(?![\s\S]*committed)/.exec(host.out);
    if (m) host.committed = Number(m[1]);
  });
  child.stderr!.on("data", (d: Buffer) => (host.out += d));
  return host;
}

function killed(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill("SIGKILL");
  });
}

describe("end to end: a Journal host and the daemon, killed at random", () => {
  it(`${ROUNDS} rounds of SIGKILL to the host, the daemon or both lose nothing acked and replay nothing rolled back`, async () => {
    const dir = tmpDir();
    const hostDb = path.join(dir, "host.db");
    const rng = new Rng(424242);
    let daemon: DaemonProcess = await startDaemon(dir, null);
    let host = startHost(daemon.socket, hostDb, TARGET);
    const kills = { host: 0, daemon: 0, both: 0 };
    let lastCommitted = 0;

    for (let round = 0; round < ROUNDS; round++) {
      await new Promise((r) => setTimeout(r, rng.int(80, 400)));
      if (host.child.exitCode !== null) throw new Error(`the host exited on its own:\n${host.out}\n${daemon.logs()}`);
      const victim = rng.pick(["host", "daemon", "both"] as const);
      kills[victim]++;
      if (victim !== "daemon") await killed(host.child);
      if (victim !== "host") await killed(daemon.child);
      lastCommitted = Math.max(lastCommitted, host.committed);
      if (victim !== "host") daemon = await startDaemon(dir, null);
      if (victim !== "daemon") host = startHost(daemon.socket, hostDb, TARGET);
    }

    // The last host reconciles like any other, makes a few more changes and exits by itself.
    await killed(host.child);
    lastCommitted = Math.max(lastCommitted, host.committed);
    const last = startHost(daemon.socket, hostDb, "+5");
    const code = await new Promise<number | null>((resolve) => last.child.on("exit", (c) => resolve(c)));
    expect(code, last.out).toBe(0);
    expect(last.out).toMatch(/done\n$/);
    expect(await daemon.stop()).toBe(0);

    const out = path.join(dir, "restored.db");
    const r = await runCli(["restore", path.join(dir, "tidemark-data/default"), out]);
    expect(r.code, r.stderr).toBe(0);
    expectSameDb(out, hostDb);
    expect(last.committed).toBeGreaterThan(lastCommitted);
    expect(fs.readdirSync(path.join(dir, "tidemark-data/default")).filter((n) => n.endsWith(".tmp"))).toEqual([]);
    console.log(`e2e: host reached version ${last.committed}; kills ${JSON.stringify(kills)}`);
  });
});
