/**
 * Daemon benchmarks, each against its limit in the same run:
 *
 *   ack over the socket   POST /changes through the client vs applyChange in-process on the
 *                         same kind of backend, same disk (target: ≤ 0.3 ms extra at p50)
 *   group commit          changes/s with 1, 4 and 16 databases written at once, with group
 *                         commit on and off
 *   compaction stall      the longest ack while a 100k-change compaction runs, vs the p50
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { openBackend } from "../src/backup/registry.js";
import { connect, type DaemonClient } from "../src/host/client.js";
import { applyChange } from "../src/ops/ingest.js";
import { ms, percentile, timed, type Row } from "./table.js";

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../src/cli.js");

/** A daemon started for a benchmark. */
export interface Daemon {
  socket: string;
  /** The daemon process, for its CPU time. */
  pid: number;
  stop(): Promise<void>;
}

/** Starts `tidemark daemon` with `config` in `dir` and waits for its socket. */
export async function startDaemon(dir: string, config: object): Promise<Daemon> {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, "tidemark.json");
  fs.writeFileSync(file, JSON.stringify({ log: { level: "warn" }, ...config }));
  const child: ChildProcess = spawn(process.execPath, [CLI, "daemon", "--config", file], { cwd: dir, stdio: ["ignore", "pipe", "inherit"] });
  const socket = path.join(dir, "tidemark.sock");
  for (let i = 0; i < 500 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 100));
  return {
    socket,
    pid: child.pid!,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

const statement = (v: number) => [`INSERT INTO ledger VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')`];
const CREATE = ["CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)"];

/** POST ack latency over the socket vs in-process applyChange. */
async function ackOverSocket(root: string, rows: Row[]): Promise<void> {
  const d = await startDaemon(path.join(root, "socket"), { databases: [{ name: "a", backend: "data/a" }] });
  const client = connect({ socket: d.socket, db: "a" });
  const local = await openBackend(path.join(root, "socket-local"), { mode: "create" });
  await client.addChange({ version: 1, transaction: CREATE });
  await applyChange(local, { version: 1, transaction: CREATE });
  const viaSocket: number[] = [];
  const inProcess: number[] = [];
  for (let v = 2; v <= 4001; v++) {
    const change = { version: v, timestamp: Date.now(), transaction: statement(v) };
    // Alternate which goes first, so neither always meets a warmer cache.
    if (v % 2) {
      viaSocket.push(await timed(() => client.addChange(change)));
      inProcess.push(await timed(() => applyChange(local, change)));
    } else {
      inProcess.push(await timed(() => applyChange(local, change)));
      viaSocket.push(await timed(() => client.addChange(change)));
    }
  }
  client.close();
  await local.close();
  await d.stop();
  for (const p of [50, 99]) {
    const a = percentile(viaSocket, p);
    const b = percentile(inProcess, p);
    rows.push({
      target: `POST ack over the socket p${p}`,
      measured: ms(a),
      limit: `${ms(b)} in-process applyChange`,
      ratio: a / b,
      goal: p === 50 ? `extra ≤ 0.3 ms (${ms(a - b)})` : `extra ${ms(a - b)}`,
      ok: p === 50 ? a - b <= 0.3 : true,
    });
  }
}

/** Changes/s with N databases written at once, with group commit on and off. */
async function groupCommit(root: string, rows: Row[]): Promise<void> {
  const names = Array.from({ length: 16 }, (_, i) => `db${i}`);
  const results = new Map<string, number>();
  for (const mode of ["off", "on"] as const) {
    const d = await startDaemon(path.join(root, `group-${mode}`), {
      groupCommit: mode,
      databases: names.map((name) => ({ name, backend: `data/${name}` })),
    });
    const clients: DaemonClient[] = names.map((db) => connect({ socket: d.socket, db }));
    const next = new Map<string, number>();
    for (const c of clients) {
      await c.addChange({ version: 1, transaction: CREATE });
      next.set(c.db, 2);
    }
    for (const n of [1, 4, 16]) {
      let count = 0;
      const end = performance.now() + 2000;
      await Promise.all(
        clients.slice(0, n).map(async (c) => {
          while (performance.now() < end) {
            const v = next.get(c.db)!;
            await c.addChange({ version: v, transaction: statement(v) });
            next.set(c.db, v + 1);
            count++;
          }
        }),
      );
      results.set(`${mode}/${n}`, count / 2);
    }
    for (const c of clients) c.close();
    await d.stop();
  }
  const one = results.get("off/1")!;
  for (const n of [1, 4, 16]) {
    const on = results.get(`on/${n}`)!;
    const off = results.get(`off/${n}`)!;
    rows.push({
      target: `group commit, ${n} database${n > 1 ? "s" : ""} at once`,
      measured: `${Math.round(on)} changes/s on`,
      limit: `${Math.round(off)}/s off; ${Math.round(one)}/s one db`,
      ratio: on / one,
      goal: "report (vs one db)",
      ok: true,
    });
  }
}

/** The longest ack while a compaction of `changes` changes runs. */
async function compactionStall(root: string, rows: Row[], changes: number): Promise<void> {
  const dir = path.join(root, "stall");
  const backend = await openBackend(path.join(dir, "data/big"), { mode: "create" });
  await applyChange(backend, { version: 1, transaction: CREATE });
  for (let v = 2; v <= changes; v++) await applyChange(backend, { version: v, transaction: statement(v) });
  await backend.close();

  const d = await startDaemon(dir, { databases: [{ name: "big", backend: "data/big", compaction: { everyChanges: 100_000_000 } }] });
  const client = connect({ socket: d.socket, db: "big" });
  const admin = connect({ socket: d.socket, db: "big" });
  const before: number[] = [];
  const during: number[] = [];
  let compacting = false;
  let done = false;
  let v = changes + 1;
  const writer = (async () => {
    while (!done) {
      const t = await timed(() => client.addChange({ version: v, transaction: statement(v) }));
      (compacting ? during : before).push(t);
      v++;
    }
  })();
  await new Promise((r) => setTimeout(r, 1000));
  compacting = true;
  const compactMs = await timed(() => admin.compact());
  compacting = false;
  done = true;
  await writer;
  client.close();
  admin.close();
  await d.stop();
  const worst = Math.max(...during);
  const p50 = percentile(before, 50);
  rows.push({
    target: `longest ack during a ${changes.toLocaleString("en-US")}-change compaction`,
    measured: ms(worst),
    limit: `${ms(p50)} p50 ack without one`,
    ratio: worst / p50,
    goal: `report (${during.length} acks in ${ms(compactMs)})`,
    ok: true,
  });
}

/** Runs every daemon benchmark into `rows`. */
export async function benchDaemon(root: string, rows: Row[], changes: number): Promise<void> {
  await ackOverSocket(root, rows);
  await groupCommit(root, rows);
  await compactionStall(root, rows, changes);
}
