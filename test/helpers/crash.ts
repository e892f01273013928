/**
 * The crash scenario shared by every backend's crash tests: the CLI is SIGKILLed at random
 * points during ingest, rewind, compact and restore, and the scenario carries on as a host
 * would. At the end the restored database must equal the host's row by row: every acked and
 * committed version is there, and nothing rewound appears.
 */
import fs from "node:fs";
import path from "node:path";
import type { ChildProcess } from "node:child_process";
import Database from "better-sqlite3";
import { expect } from "vitest";
import type { Statement } from "../../src/model/change.js";
import { statementsToWire } from "../../src/model/change-json.js";
import { runCli, spawnCli } from "./cli.js";
import { applyStatements, expectSameDb } from "./sqlite.js";
import { Rng, Workload } from "./workload.js";

/** What the scenario needs to know about the backend under test. */
export interface CrashTarget {
  /** The backup location, as the CLI takes it. */
  readonly location: string;
  /** True while a writer holds the backup (its lock file, its lease object). */
  lockHeld(): boolean | Promise<boolean>;
  /** Temp files or objects left behind, which must be none at the end. */
  leftovers(): string[] | Promise<string[]>;
}

/** Kills counted per command. */
export interface CrashReport {
  hostVersion: number;
  abandoned: number;
  kills: { ingest: number; compact: number; rewind: number; restore: number };
}

/** Waits for a child to exit; resolves with its exit code or signal. */
function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    else child.on("close", (code, signal) => resolve({ code, signal }));
  });
}

/**
 * SIGKILLs a writer child at a random moment once it holds the backup's lock, so that the kill
 * lands inside the work rather than during Node's start-up. Returns whether it killed.
 */
async function killWhileWorking(child: ChildProcess, target: CrashTarget, rng: Rng, maxDelayMs: number): Promise<boolean> {
  let killed = false;
  let done = false;
  const poll = async () => {
    while (!done && !(await target.lockHeld())) await new Promise((r) => setTimeout(r, 1));
    if (!done) setTimeout(() => (killed = child.kill("SIGKILL")), rng.int(0, maxDelayMs));
  };
  void poll();
  const r = await exited(child);
  done = true;
  return killed && r.signal === "SIGKILL";
}

/** Reads ack lines from an ingest child. */
class AckReader {
  readonly acks: number[] = [];
  #buf = "";
  #waiters: (() => void)[] = [];
  constructor(child: ChildProcess) {
    child.stdout!.on("data", (d: Buffer) => {
      this.#buf += d.toString();
      let nl: number;
      while ((nl = this.#buf.indexOf("\n")) >= 0) {
        const line = this.#buf.slice(0, nl);
        this.#buf = this.#buf.slice(nl + 1);
        this.acks.push(JSON.parse(line).version);
      }
      this.#wake();
    });
    child.on("close", () => this.#wake());
  }
  #wake() {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }
  /** Resolves when there are more than `n` acks, or the child is gone. */
  async waitFor(n: number, child: ChildProcess): Promise<boolean> {
    while (this.acks.length <= n) {
      if (child.exitCode !== null || child.signalCode !== null) return false;
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    return true;
  }
}

/**
 * Runs the scenario in `dir` (where the host database and restores go) against `target`, for
 * `rounds` rounds, and checks the result.
 */
export async function runCrashScenario(dir: string, target: CrashTarget, rounds: number): Promise<CrashReport> {
    const backup = target.location;
    const hostFile = path.join(dir, "host.db");
    const host = new Database(hostFile);
    const rng = new Rng(20261122);
    const work = new Workload(42);
    let hostVersion = 0;
    /** Statements sent for hostVersion+1 but not yet acked: a host retries the same transaction. */
    let pending: Statement[] | null = null;
    /** The backup holds an acked change the host did not commit (the host "died" before commit). */
    let backupAhead = false;
    let abandoned = 0;
    const kills = { ingest: 0, compact: 0, rewind: 0, restore: 0 };

    for (let round = 0; round < rounds; round++) {
      const roll = rng.next();
      if (roll < 0.15) {
        const child = spawnCli(["compact", backup]);
        if (await killWhileWorking(child, target, rng, 40)) kills.compact++;
        else expect(child.exitCode).toBe(0);
        continue;
      }
      if (backupAhead && rng.chance(0.5)) {
        // A host at start-up finds the backup one ahead and rewinds it explicitly.
        const child = spawnCli(["rewind", backup]);
        if (await killWhileWorking(child, target, rng, 3)) kills.rewind++;
        else {
          // Exit 1 means a killed earlier attempt had already rewound it.
          expect([0, 1]).toContain(child.exitCode);
          backupAhead = false;
        }
        continue;
      }
      if (roll < 0.3) {
        const child = spawnCli(["restore", backup, path.join(dir, "killed-restore.db"), "--force"]);
        const timer = setTimeout(() => child.kill("SIGKILL"), rng.int(50, 300));
        const r = await exited(child);
        clearTimeout(timer);
        if (r.signal) kills.restore++;
        continue;
      }

      const child = spawnCli(["ingest", backup]);
      child.stdin!.on("error", () => {});
      const acks = new AckReader(child);
      const killAt = rng.int(0, 25);
      for (let i = 0; ; i++) {
        // Occasionally the host commits nothing after an ack: it died and will redo the version.
        const abandon = !pending && rng.chance(0.06);
        const statements = abandon ? [`CREATE TABLE rolled_back_${abandoned++} (x)`] : (pending ??= work.transaction());
        const version = hostVersion + 1;
        child.stdin!.write(`${JSON.stringify({ version, transaction: statementsToWire(statements) })}\n`);
        if (i === killAt) setTimeout(() => child.kill("SIGKILL"), rng.int(0, 2));
        const acked = (await acks.waitFor(i, child)) || acks.acks.length > i;
        if (!acked) break;
        expect(acks.acks[i]).toBe(version);
        if (abandon) {
          // The host dies here: it restarts with the backup one version ahead.
          backupAhead = true;
          break;
        }
        applyStatements(host, statements);
        hostVersion = version;
        pending = null;
        backupAhead = false;
        if (i >= killAt) break;
      }
      child.stdin!.end();
      const r = await exited(child);
      if (r.signal) kills.ingest++;
    }

    // One clean run as a host would resume: the next change, then a restore.
    const last = work.transaction();
    const final = pending ?? last;
    const ingest = await runCli(["ingest", backup], {
      input: `${JSON.stringify({ version: hostVersion + 1, transaction: statementsToWire(final) })}\n`,
    });
    expect(ingest.code, ingest.stderr).toBe(0);
    applyStatements(host, final);
    hostVersion++;
    host.close();

    const out = path.join(dir, "restored.db");
    const restored = await runCli(["restore", backup, out, "--json"]);
    expect(restored.code, restored.stderr).toBe(0);
    expect(JSON.parse(restored.stdout).version).toBe(hostVersion);
    expectSameDb(out, hostFile);

    // No temp files anywhere, no lock, and the killed processes did get killed.
    expect(await target.leftovers()).toEqual([]);
    const verify = await runCli(["verify", backup]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const again = await runCli(["restore", backup, path.join(dir, "killed-restore.db"), "--force"]);
    expect(again.code).toBe(0);
    expect(fs.readdirSync(dir).filter((n) => n.includes(".tmp"))).toEqual([]);
    expect(kills.ingest).toBeGreaterThan(1);
    expect(kills.compact).toBeGreaterThan(0);
    expect(kills.rewind).toBeGreaterThan(0);
    return { hostVersion, abandoned, kills };
}
