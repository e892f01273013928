/**
 * `npm run demo`: a host application backed up by tidemark, end to end, with the real CLI.
 *
 * It inits a file backup in ./tidemark-demo/backup, ingests a few thousand changes from a small
 * bank-ledger host, kills the ingest with SIGKILL half-way and carries on as a host would,
 * compacts, restores, and compares the restored database with the host's row by row.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../src/cli.js");
const ROOT = path.resolve("tidemark-demo");
const BACKUP = path.join(ROOT, "backup");
const HOST = path.join(ROOT, "host.db");
const RESTORED = path.join(ROOT, "restored.db");
const CHANGES = 3000;

function step(text: string): void {
  process.stdout.write(`\n$ ${text}\n`);
}

function tidemark(args: string[]): string {
  step(`tidemark ${args.join(" ")}`);
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
  process.stdout.write(r.stdout);
  if (r.status !== 0) {
    process.stderr.write(r.stderr);
    throw new Error(`tidemark ${args[0]} exited with ${r.status}`);
  }
  return r.stdout;
}

/** The host's next transaction: the statements it will run for `version`. */
function transactionFor(version: number): string[] {
  if (version === 1) {
    return [
      "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL)",
      "CREATE TABLE transfers (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, memo TEXT)",
      ...Array.from({ length: 20 }, (_, i) => `INSERT INTO accounts VALUES (${i + 1}, 'owner ${i + 1}', 1000)`),
    ];
  }
  const src = (version * 7) % 20 + 1;
  const dst = (version * 13) % 20 + 1;
  const amount = version % 50;
  return [
    `UPDATE accounts SET balance = balance - ${amount} WHERE id = ${src}`,
    `UPDATE accounts SET balance = balance + ${amount} WHERE id = ${dst}`,
    `INSERT INTO transfers (src, dst, amount, memo) VALUES (${src}, ${dst}, ${amount}, 'transfer #${version} — it''s fine')`,
  ];
}

/**
 * Runs one ingest process as a host does: send a change, wait for its ack, then commit locally.
 * Kills the ingest with SIGKILL after `killAfter` acks. Returns the host's version.
 */
async function hostSession(host: Database.Database, from: number, to: number, killAfter: number): Promise<number> {
  const child = spawn(process.execPath, [CLI, "ingest", BACKUP], { stdio: ["pipe", "pipe", "inherit"] });
  child.stdin.on("error", () => {});
  let version = from - 1;
  let buffered = "";
  const acks: number[] = [];
  let wake: (() => void) | null = null;
  child.stdout.on("data", (d: Buffer) => {
    buffered += d;
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      acks.push(JSON.parse(buffered.slice(0, nl)).version);
      buffered = buffered.slice(nl + 1);
    }
    wake?.();
  });
  const closed = new Promise<void>((resolve) => child.on("close", () => resolve()));
  child.on("close", () => wake?.());
  for (let v = from; v <= to; v++) {
    const statements = transactionFor(v);
    child.stdin.write(`${JSON.stringify({ version: v, transaction: statements })}\n`);
    while (acks.length < v - from + 1 && child.exitCode === null && child.signalCode === null) {
      await new Promise<void>((r) => (wake = r));
    }
    if (acks.length < v - from + 1) break; // no ack: the host does not commit
    host.transaction(() => statements.forEach((s) => host.exec(s)))();
    version = v;
    if (acks.length === killAfter) {
      child.kill("SIGKILL");
      process.stdout.write(`  … ${acks.length} changes acked, then kill -9 of the ingest process\n`);
      break;
    }
  }
  child.stdin.end();
  await closed;
  return version;
}

function rows(file: string): string {
  const db = new Database(file, { readonly: true });
  try {
    return JSON.stringify([db.prepare("SELECT * FROM accounts ORDER BY id").all(), db.prepare("SELECT * FROM transfers ORDER BY id").all()]);
  } finally {
    db.close();
  }
}

async function main(): Promise<void> {
  fs.rmSync(ROOT, { recursive: true, force: true });
  fs.mkdirSync(ROOT, { recursive: true });
  const host = new Database(HOST);

  tidemark(["init", BACKUP]);

  step(`(host) ingest changes 1..${CHANGES} through tidemark ingest, killed with SIGKILL half-way`);
  let version = await hostSession(host, 1, CHANGES, CHANGES / 2);
  process.stdout.write(`  host committed up to version ${version}; restarting the ingest\n`);
  version = await hostSession(host, version + 1, CHANGES, -1);
  process.stdout.write(`  host committed up to version ${version}\n`);
  host.close();

  tidemark(["status", BACKUP]);
  tidemark(["compact", BACKUP]);
  tidemark(["verify", BACKUP]);
  tidemark(["restore", BACKUP, RESTORED]);

  const same = rows(RESTORED) === rows(HOST);
  step("(compare) restored.db against the host's database, row by row");
  process.stdout.write(same ? `  identical: ${CHANGES} versions, every row equal\n` : "  MISMATCH\n");
  process.stdout.write(`\nEverything is in ${ROOT}. Try: node ${path.relative(process.cwd(), CLI)} status ${path.relative(process.cwd(), BACKUP)}\n`);
  if (!same) process.exitCode = 1;
}

await main();
