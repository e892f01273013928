/**
 * The plugin against real traffic: every db_write call a real lightningd v26.06.6 made from a
 * brand-new node (test/fixtures/core-lightning/README.md), replayed as lightningd made them: a
 * new plugin process at each start marker, SIGKILL at each kill marker, each call sent only once
 * the one before it was answered. The backup must ack every call and restore the node's own
 * database after its final clean stop, row for row.
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it, onTestFinished } from "vitest";
import { runCli } from "../helpers/cli.js";
import { startDaemon } from "../helpers/daemon.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { FakeLightningd } from "../fixtures/cln/fake-lightningd.js";

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/core-lightning");
const RECORDING = path.join(FIXTURES, "db-write-recording-v26.06.6.jsonl");
const FINAL_DB = path.join(FIXTURES, "db-write-recording-v26.06.6.final.sqlite3");

type Line = { event: "start" | "kill9"; run: number } | { seq: number; pid: number; data_version: number; writes: string[] };

function recording(): Line[] {
  return fs
    .readFileSync(RECORDING, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Line);
}

/** Replays the recording into the plugin in `dir`; returns the answers, in order. */
async function replay(dir: string, lines: readonly Line[]): Promise<{ answers: string[]; node: FakeLightningd }> {
  const node = new FakeLightningd(dir);
  onTestFinished(() => node.close());
  const answers: string[] = [];
  let running = false;
  for (const line of lines) {
    if ("event" in line) {
      if (line.event === "start") {
        // A start with no kill before it follows a clean stop: lightningd closes the plugin's stdin.
        if (running) expect(await node.stopPlugin()).toBe(0);
        running = true;
        node.startPlugin();
        await node.handshake();
      } else {
        await node.killPlugin();
        running = false;
      }
      continue;
    }
    const answer = (await node.request("db_write", { data_version: line.data_version, writes: line.writes })) as { result: string };
    answers.push(answer.result);
  }
  expect(await node.stopPlugin()).toBe(0);
  return { answers, node };
}

describe("cln-plugin: the traffic of a real lightningd", () => {
  it("acks every db_write of a brand-new node through five kill -9s, and the backup restores its final database row for row", async () => {
    const lines = recording();
    const calls = lines.filter((l) => !("event" in l));
    expect(calls).toHaveLength(710);
    // What makes the recording hard: versions 1 and 2 repeat within run 1 (continuations),
    // and the first write after four of the kills redoes a version acknowledged but not committed.
    const versions = calls.map((c) => ("data_version" in c ? c.data_version : 0));
    expect(versions.slice(0, 5)).toEqual([1, 1, 2, 2, 3]);

    const root = tmpDir();
    const dir = path.join(root, "regtest");
    fs.mkdirSync(dir);
    const backup = path.join(root, "backup");
    const init = await runCli(["cln", "init", backup, "--lightning-dir", dir]);
    expect(init.code, init.stderr).toBe(0);

    const { answers, node } = await replay(dir, lines);
    expect(node.logsAt("broken")).toEqual([]);
    expect(answers.filter((a) => a !== "continue")).toEqual([]);
    expect(answers).toHaveLength(710);
    // One rewind per redo after a kill: runs 3, 4, 5 and 7 start with one.
    expect(node.logs.filter((l) => /stopped after version \d+ was backed up/.test(l.message))).toHaveLength(4);

    const status = JSON.parse((await runCli(["status", backup, "--json"])).stdout) as { version: number };
    expect(status.version).toBe(704);
    const restored = path.join(root, "restored.sqlite3");
    const r = await runCli(["restore", backup, restored, "--rules", "core-lightning"]);
    expect(r.code, r.stderr).toBe(0);
    expectSameDb(restored, FINAL_DB);

    // Version 1 alone (the schema and its continuation) restores too: the node's 71 schema objects start there.
    const first = path.join(root, "restored-1.sqlite3");
    const r1 = await runCli(["restore", backup, first, "--version", "1"]);
    expect(r1.code, r1.stderr).toBe(0);
  }, 240_000);

  it("acks the same traffic through a running daemon, and the daemon's backup restores the final database row for row", async () => {
    const root = tmpDir();
    const dir = path.join(root, "regtest");
    fs.mkdirSync(dir);
    const backendPath = path.join(root, "data", "cln");
    const daemon = await startDaemon(root, { socket: "tidemark.sock", databases: [{ name: "cln", backend: backendPath, rules: "core-lightning" }] });
    onTestFinished(async () => void (await daemon.stop()));
    const init = await runCli(["cln", "init", backendPath, "--lightning-dir", dir, "--daemon-socket", daemon.socket, "--daemon-db", "cln"]);
    expect(init.code, init.stderr).toBe(0);

    const { answers, node } = await replay(dir, recording());
    expect(node.logsAt("broken")).toEqual([]);
    expect(answers.filter((a) => a !== "continue")).toEqual([]);
    expect(answers).toHaveLength(710);
    await daemon.stop();

    const restored = path.join(root, "restored.sqlite3");
    const r = await runCli(["restore", backendPath, restored, "--rules", "core-lightning"]);
    expect(r.code, r.stderr).toBe(0);
    expectSameDb(restored, FINAL_DB);
  }, 240_000);
});
