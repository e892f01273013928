/**
 * Real programs for capture tests: `tidemark watch` as a child process, and applications that
 * know nothing of tidemark (python3's sqlite3 module, a better-sqlite3 process), each printing
 * "committed <id>" after every commit.
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { spawnCli } from "./cli.js";

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../fixtures");
/** The python3 application. */
export const PY_APP = path.join(FIXTURES, "wal-app.py");
/** The better-sqlite3 application. */
export const NODE_APP = path.join(FIXTURES, "wal-app.mjs");

/** A running `tidemark watch`. */
export interface Watcher {
  readonly child: ChildProcess;
  stderr(): string;
  /** Sends SIGINT and waits for the exit code. */
  stop(): Promise<number | null>;
  /** Sends SIGKILL and waits for it to be gone. */
  kill(): Promise<void>;
}

/** Starts `tidemark watch db backup ...extra` and waits until it says it is watching. */
export async function startWatch(db: string, backup: string, extra: string[] = []): Promise<Watcher> {
  const child = spawnCli(["watch", db, backup, ...extra]);
  let err = "";
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on("data", (d) => {
      err += d;
      if (err.includes("watching ")) resolve();
    });
    void exited.then((code) => reject(new Error(`tidemark watch exited with ${code} before watching: ${err}`)));
  });
  return {
    child,
    stderr: () => err,
    stop: async () => {
      child.kill("SIGINT");
      return exited;
    },
    kill: async () => {
      child.kill("SIGKILL");
      await exited;
    },
  };
}

/** A running application. */
export interface App {
  readonly child: ChildProcess;
  /** Ids whose transactions the application reported committed. */
  readonly committed: number[];
  /** Resolves with the exit code when it ends. */
  readonly done: Promise<number | null>;
  output(): string;
}

/** Starts an application: `python3 wal-app.py` or `node wal-app.mjs`, with its arguments. */
export function startApp(kind: "python" | "node", args: string[]): App {
  const child = kind === "python" ? spawn("python3", [PY_APP, ...args], { stdio: ["ignore", "pipe", "pipe"] }) : spawn(process.execPath, [NODE_APP, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const committed: number[] = [];
  let out = "";
  let partial = "";
  child.stdout!.on("data", (d) => {
    out += d;
    const lines = (partial + String(d)).split("\n");
    partial = lines.pop()!;
    for (const l of lines) {
      const m = /^committed (\d+)$/.exec(l);
      if (m) committed.push(Number(m[1]));
    }
  });
  child.stderr!.on("data", (d) => (out += d));
  const done = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  return { child, committed, done, output: () => out };
}

/** Runs an application to completion; throws if it fails. */
export async function runApp(kind: "python" | "node", args: string[]): Promise<number[]> {
  const app = startApp(kind, args);
  const code = await app.done;
  if (code !== 0) throw new Error(`${kind} app exited with ${code}: ${app.output()}`);
  return app.committed;
}

/** Waits until `check` is true, polling. */
export async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
