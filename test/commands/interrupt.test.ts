/**
 * Ctrl-C and SIGTERM in the long commands: a real child process, a real signal sent while it
 * works. It must print one line, exit 130, leave no temp file and no lock, and change nothing.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import { applyChange } from "../../src/ops/ingest.js";
import { CLI, runCli, spawnCli } from "../helpers/cli.js";
import os from "node:os";
import { waitFor } from "../helpers/daemon.js";

/** Changes, and statements in each: enough that a restore takes a good second. */
const CHANGES = 600;
const ROWS = 1000;

let root: string;
let backup: string;

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-interrupt-"));
  backup = path.join(root, "backup");
  const b = await openBackend(backup, { mode: "create" });
  try {
    await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (x, y)"] });
    for (let v = 2; v <= CHANGES; v++) {
      await applyChange(b, { version: v, transaction: Array.from({ length: ROWS }, (_, i) => `INSERT INTO t VALUES (${v}, ${i})`) });
    }
  } finally {
    await b.close();
  }
  return () => fs.rmSync(root, { recursive: true, force: true });
}, 120_000);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Starts the command, waits until `started(stderr)` says it is at work, sends `signal`, and
 * waits for the exit. Plain progress lines come every 0.2 s (stderr is a pipe).
 */
async function interrupt(args: string[], started: (stderr: string) => boolean, signal: NodeJS.Signals): Promise<Run> {
  const child: ChildProcess = spawnCli(args, { env: { TIDEMARK_PROGRESS_SECONDS: "0.2" } });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += d));
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  await waitFor(() => started(stderr) || child.exitCode !== null, 60_000);
  expect(child.exitCode, `the command finished before the signal:\n${stderr}`).toBeNull();
  child.kill(signal);
  const code = await exited;
  return { code, stdout, stderr };
}

const statusOf = async () => (await runCli(["status", backup, "--json"])).stdout;

function expectInterrupted(r: Run, dest: string): void {
  expect(r.code, r.stderr).toBe(130);
  expect(r.stderr.trim().split("\n").at(-1)).toBe(`interrupted; nothing was written to ${dest}`);
  expect(r.stderr).not.toMatch(/Error:/);
  expect(r.stdout).toBe("");
}

describe("interrupts", () => {
  it("restore: SIGINT mid-replay exits 130 with one line, and leaves no file and no temp file; progress named the phase", async () => {
    const dir = fs.mkdtempSync(path.join(root, "restore-"));
    const dest = path.join(dir, "r.db");
    const r = await interrupt(["restore", backup, dest], (err) => /restore: replaying, \d+\/\d+ versions \(\d+%\)/.test(err), "SIGINT");
    expectInterrupted(r, dest);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("restore on a terminal: Ctrl-C stops the bar for good and gives the cursor back", async () => {
    const dir = fs.mkdtempSync(path.join(root, "tty-"));
    const dest = path.join(dir, "r.db");
    // util-linux script(1) runs the command on a pseudo-terminal; a \x03 written to it is a real Ctrl-C.
    const child = spawn("script", ["-qec", [process.execPath, CLI, "restore", backup, dest].map((a) => `'${a}'`).join(" "), "/dev/null"], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let out = "";
    let sent = -1;
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (sent < 0 && /restore \[.*\| replaying/.test(out)) {
        sent = out.length;
        child.stdin!.write("\x03");
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(sent, out).toBeGreaterThan(0);
    expect(code, out).toBe(130);
    const after = out.slice(sent);
    expect(after).toMatch(/\u001b\[\?25h/); // cursor shown
    expect(after).not.toMatch(/\u001b\[\?25l/); // and never hidden again: no bar redrawn
    expect(after.trimEnd().endsWith(`interrupted; nothing was written to ${dest}`)).toBe(true);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("compact: SIGTERM mid-replay exits 130, removes its temp files, releases the lock, and changes nothing", async () => {
    const tmp = fs.mkdtempSync(path.join(root, "compact-tmp-"));
    const before = await statusOf();
    const r = await interrupt(["compact", backup, "--tmp-dir", tmp], (err) => /compact: replaying, \d+\/\d+ versions/.test(err), "SIGTERM");
    expectInterrupted(r, backup);
    expect(fs.readdirSync(tmp)).toEqual([]);
    expect(fs.existsSync(path.join(backup, "LOCK"))).toBe(false);
    expect(await statusOf()).toBe(before);
  });

  it("verify --restore: SIGINT exits 130 and removes its test restore", async () => {
    const tmp = fs.mkdtempSync(path.join(root, "verify-tmp-"));
    const r = await interrupt(["verify", backup, "--restore", "--tmp-dir", tmp], () => fs.readdirSync(tmp).length > 0, "SIGINT");
    expectInterrupted(r, backup);
    expect(fs.readdirSync(tmp)).toEqual([]);
  });

  it("copy: SIGINT exits 130 and leaves the destination empty", async () => {
    const dest = path.join(root, "copy");
    const r = await interrupt(["copy", backup, dest], (err) => /copy: copying, [1-9]\d*\/\d+ versions/.test(err), "SIGINT");
    expectInterrupted(r, dest);
    const status = await runCli(["status", dest, "--json"]);
    expect(JSON.parse(status.stdout)).toMatchObject({ version: 0, records: 0 });
  });
});
