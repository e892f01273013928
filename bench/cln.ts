/**
 * The Core Lightning plugin's cost per db_write, against its limit in the same run:
 *
 *   added cost        the real plugin process (`tidemark cln-plugin`), driven over its stdio as
 *                     lightningd drives it, one db_write at a time, to a file backup: its round
 *                     trip minus a raw append+fdatasync of the same record bytes in this process
 *                     (goal: ≤ 1 ms at p50)
 *   through a daemon  the same plugin with backup.lock naming a daemon database, vs direct
 *                     (goal: ≤ 1.5×; the daemon's per-request overhead is issue #10's)
 *   echo plugin       a plugin that answers "continue" at once: the share of the round trip that
 *                     is the protocol itself, which any plugin (the Python one too) pays
 *   CPU per write     the plugin's own CPU time (user + system, from /proc), and the daemon's
 *
 * All four run interleaved, in rotating order, on the same disk.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { openBackend } from "../src/backup/registry.js";
import { JsonStreamSplitter } from "../src/cln/json-stream.js";
import { encodeChangeRecord } from "../src/format/record-codec.js";
import { writeAll } from "../src/util/durable-fs.js";
import { startDaemon } from "./daemon.js";
import { ms, percentile, type Row } from "./table.js";

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../src/cli.js");

/** A plugin that acks every db_write at once: the protocol's own cost. */
const ECHO_PLUGIN = `
let buf = "";
process.stdin.on("data", (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf("\\n\\n")) >= 0) {
    const msg = JSON.parse(buf.slice(0, i));
    buf = buf.slice(i + 2);
    const result = msg.method === "db_write" ? { result: "continue" } : {};
    process.stdout.write(JSON.stringify({ jsonrpc: "2.0", id: msg.id, result }) + "\\n\\n");
  }
});`;

/** A plugin process driven as lightningd drives it: one request at a time over stdio. */
class PluginProcess {
  readonly #child: ChildProcess;
  readonly #pending = new Map<number, (v: unknown) => void>();
  #nextId = 1;

  constructor(args: string[], cwd: string) {
    this.#child = spawn(process.execPath, args, { cwd, stdio: ["pipe", "pipe", "inherit"] });
    const splitter = new JsonStreamSplitter(() => {});
    this.#child.stdout!.on("data", (chunk: Buffer) => {
      for (const text of splitter.push(chunk)) {
        const msg = JSON.parse(text) as { id?: number; method?: string; result?: unknown; params?: { level: string; message: string } };
        if (msg.method === "log") {
          if (msg.params!.level === "broken") process.stderr.write(`${msg.params!.message}\n`);
          continue;
        }
        this.#pending.get(msg.id!)?.(msg.result);
        this.#pending.delete(msg.id!);
      }
    });
  }

  get pid(): number {
    return this.#child.pid!;
  }

  request(method: string, params: unknown): Promise<unknown> {
    const id = this.#nextId++;
    const answer = new Promise<unknown>((resolve) => this.#pending.set(id, resolve));
    this.#child.stdin!.write(`${JSON.stringify({ jsonrpc: "2.0", id, method, params })}\n\n`);
    return answer;
  }

  async start(dir: string): Promise<void> {
    await this.request("getmanifest", {});
    await this.request("init", { options: {}, configuration: { "lightning-dir": dir } });
  }

  stop(): Promise<void> {
    return new Promise((resolve) => {
      this.#child.once("exit", () => resolve());
      this.#child.stdin!.end();
    });
  }
}

/** CPU time (user + system) a process has used, in ms, from /proc. */
function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 of stat(5), counted from the state field (3) here; clock ticks of 10 ms.
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** The writes lightningd sends for one `datastore` RPC: the row, and its data_version bump. */
function writesFor(v: number): string[] {
  const key = Buffer.from(`bench\0key-${v}`).toString("hex");
  const value = Buffer.alloc(64, v % 251).toString("hex");
  return [`INSERT INTO datastore VALUES (x'${key}', x'${value}', 0);`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`];
}
const SCHEMA = [
  "CREATE TABLE vars (name VARCHAR(32), val VARCHAR(255), intval INTEGER, blobval BLOB, PRIMARY KEY (name))",
  "INSERT INTO vars (name, intval) VALUES ('data_version', 0)",
  "CREATE TABLE datastore (key BLOB, data BLOB, generation BIGINT, PRIMARY KEY (key))",
  "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 0",
];

/** Runs the plugin benchmarks; `writes` db_write calls to each. */
export async function benchCln(root: string, rows: Row[], writes: number): Promise<void> {
  fs.mkdirSync(root, { recursive: true });
  const directDir = path.join(root, "direct");
  fs.mkdirSync(directDir);
  const backup = path.join(root, "direct-backup");
  await (await openBackend(backup, { mode: "create" })).close();
  fs.writeFileSync(path.join(directDir, "backup.lock"), JSON.stringify({ backend_url: backup }));

  const daemon = await startDaemon(path.join(root, "daemon"), { databases: [{ name: "cln", backend: "data/cln" }] });
  const daemonDir = path.join(root, "via-daemon");
  fs.mkdirSync(daemonDir);
  fs.writeFileSync(path.join(daemonDir, "backup.lock"), JSON.stringify({ daemon_socket: daemon.socket, daemon_db: "cln" }));

  const direct = new PluginProcess([CLI, "cln-plugin"], directDir);
  const viaDaemon = new PluginProcess([CLI, "cln-plugin"], daemonDir);
  const echo = new PluginProcess(["-e", ECHO_PLUGIN], root);
  await direct.start(directDir);
  await viaDaemon.start(daemonDir);
  await echo.start(root);

  const raw = fs.openSync(path.join(root, "raw.log"), "w");
  let rawPos = 0;
  const t = { direct: [] as number[], daemon: [] as number[], echo: [] as number[], raw: [] as number[] };
  const call = async (p: PluginProcess, version: number, w: string[], into: number[]) => {
    const t0 = performance.now();
    const answer = (await p.request("db_write", { data_version: version, writes: w })) as { result: string };
    into.push(performance.now() - t0);
    if (answer.result !== "continue") throw new Error(`the plugin answered ${answer.result} to data_version ${version}`);
  };
  const warmup = 200;
  let cpu = { direct: 0, daemonPlugin: 0, daemon: 0, raw: 0 };
  for (let v = 1; v <= writes + warmup; v++) {
    if (v === warmup + 1) {
      for (const k of Object.keys(t) as (keyof typeof t)[]) t[k].length = 0;
      cpu = { direct: cpuMs(direct.pid), daemonPlugin: cpuMs(viaDaemon.pid), daemon: cpuMs(daemon.pid), raw: 0 };
    }
    const w = v === 1 ? SCHEMA : writesFor(v);
    const bytes = encodeChangeRecord({ version: v, timestamp: Date.now(), transaction: w });
    const steps = [
      () => call(direct, v, w, t.direct),
      () => call(viaDaemon, v, w, t.daemon),
      () => call(echo, v, w, t.echo),
      () => {
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        writeAll(raw, bytes, rawPos);
        fs.fdatasyncSync(raw);
        t.raw.push(performance.now() - t0);
        const c = process.cpuUsage(c0);
        if (v > warmup) cpu.raw += (c.user + c.system) / 1000;
        rawPos += bytes.length;
      },
    ];
    // Rotate the order, so that none always meets a warmer cache or a quieter disk.
    for (let i = 0; i < steps.length; i++) await steps[(i + v) % steps.length]!();
  }
  const perWrite = (before: number, pid: number) => (cpuMs(pid) - before) / writes;
  const cpuDirect = perWrite(cpu.direct, direct.pid);
  const cpuDaemonPlugin = perWrite(cpu.daemonPlugin, viaDaemon.pid);
  const cpuDaemon = perWrite(cpu.daemon, daemon.pid);
  fs.closeSync(raw);
  await Promise.all([direct.stop(), viaDaemon.stop(), echo.stop()]);
  await daemon.stop();

  const [d50, r50, dm50, e50] = [t.direct, t.raw, t.daemon, t.echo].map((x) => percentile(x, 50)) as [number, number, number, number];
  const added = d50 - r50;
  rows.push({
    target: "cln plugin: added cost per write beyond one fdatasync, p50 (file)",
    measured: ms(added),
    limit: `1 ms (plugin ${ms(d50)} - raw append+fdatasync ${ms(r50)})`,
    ratio: added / 1,
    goal: "≤ 1.0",
    ok: added <= 1,
  });
  const own = d50 - r50 - e50;
  rows.push({
    target: "cln plugin: of that, beyond the protocol's round trip (echo plugin), p50",
    measured: ms(own),
    limit: `1 ms (minus the echo plugin's ${ms(e50)})`,
    ratio: own / 1,
    goal: "report",
    ok: true,
  });
  rows.push({
    target: "cln plugin: round trip p99 (file)",
    measured: ms(percentile(t.direct, 99)),
    limit: `${ms(percentile(t.raw, 99))} raw append+fdatasync p99`,
    ratio: percentile(t.direct, 99) / percentile(t.raw, 99),
    goal: "report",
    ok: true,
  });
  rows.push({
    target: "cln plugin: through the daemon vs direct, p50",
    measured: ms(dm50),
    limit: `${ms(d50)} direct`,
    ratio: dm50 / d50,
    goal: "≤ 1.5",
    ok: dm50 / d50 <= 1.5,
  });
  rows.push({
    target: "cln plugin: the protocol's own round trip (echo plugin), p50",
    measured: ms(e50),
    limit: `${ms(d50)} tidemark plugin`,
    ratio: e50 / d50,
    goal: "report",
    ok: true,
  });
  rows.push({
    target: "cln plugin: CPU per write (user+system)",
    measured: `${ms(cpuDirect)} plugin`,
    limit: `${ms(cpu.raw / writes)} raw append+fdatasync`,
    ratio: cpuDirect / Math.max(cpu.raw / writes, 1e-3),
    goal: "report",
    ok: true,
  });
  rows.push({
    target: "cln plugin via daemon: CPU per write",
    measured: `${ms(cpuDaemonPlugin)} plugin + ${ms(cpuDaemon)} daemon`,
    limit: `${ms(cpuDirect)} direct plugin`,
    ratio: (cpuDaemonPlugin + cpuDaemon) / Math.max(cpuDirect, 1e-3),
    goal: "report",
    ok: true,
  });
}
