/**
 * Which modules each command loads (issue 13: a fast CLI). Every command module is loaded to
 * build the program, so what an action runs must be imported when it runs; these tests run the
 * built CLI with a preload that records every module loaded (test/fixtures/load-recorder.mjs)
 * and check the record. A structural check, not a timing: bench/cli.ts measures the time.
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { CLI, runCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";

const RECORDER = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/load-recorder.mjs");
const DIST = path.resolve(path.dirname(CLI), "..");

/** What a run loaded: npm packages by name, and tidemark's own modules relative to dist/. */
interface Loaded {
  readonly packages: Set<string>;
  readonly own: Set<string>;
  readonly stdout: string;
}

function loadedBy(args: string[], input = ""): Loaded {
  const record = path.join(tmpDir(), "loaded.txt");
  const r = spawnSync(process.execPath, ["--import", RECORDER, CLI, ...args], {
    input,
    encoding: "utf8",
    env: { ...process.env, LOAD_RECORD: record },
  });
  expect(r.status, r.stderr).toBe(0);
  const files = fs
    .readFileSync(record, "utf8")
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("node:"))
    .map((l) => (l.startsWith("file:") ? fileURLToPath(l) : l));
  const packages = new Set<string>();
  const own = new Set<string>();
  for (const f of files) {
    const m = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(f);
    if (m) packages.add(m[1]!);
    else if (f.startsWith(DIST + path.sep)) own.add(path.relative(DIST, f));
  }
  return { packages, own, stdout: r.stdout };
}

/** Packages only the daemon (zod: its configuration), S3, the host client, capture or restore use. */
const HEAVY = ["zod", "@aws-sdk/client-s3", "@aws-sdk/lib-storage", "@aws-sdk/credential-provider-node", "undici", "prom-client", "pino", "yaml", "chokidar", "better-sqlite3", "cli-progress"];

async function fileBackup(): Promise<string> {
  const backup = path.join(tmpDir(), "backup");
  expect((await runCli(["init", backup])).code).toBe(0);
  const r = await runCli(["ingest", backup], { input: '{"version":1,"transaction":["CREATE TABLE t (x)"]}\n{"version":2,"transaction":["INSERT INTO t VALUES (1)"]}\n' });
  expect(r.code, r.stderr).toBe(0);
  return backup;
}

describe("cli: a command loads only what it runs", () => {
  it("--version loads no package and none of the commands", () => {
    const v = loadedBy(["--version"]);
    expect(v.stdout).toMatch(/^\d+\.\d+\.\d+/);
    expect([...v.packages]).toEqual([]);
    expect([...v.own].sort()).toEqual(["src/cli.js", "src/util/errors.js"]);
  });

  it("--help loads commander and the command modules, and nothing their actions use", () => {
    const h = loadedBy(["--help"]);
    expect(h.stdout).toContain("Usage: tidemark");
    expect([...h.packages]).toEqual(["commander"]);
    const layers = new Set([...h.own].map((f) => f.split(path.sep).slice(0, 2).join("/")));
    // The backup core, ops, the daemon, the host client and the backends stay unloaded.
    for (const layer of ["src/backup", "src/ops", "src/daemon", "src/host", "src/cln", "backends"]) expect(layers, layer).not.toContain(layer);
  });

  it("status of a file backup loads neither the S3 SDK nor the daemon's, client's or capture's packages", async () => {
    const backup = await fileBackup();
    const s = loadedBy(["status", backup]);
    expect(s.stdout).toContain("head        2");
    for (const pkg of HEAVY) expect(s.packages, pkg).not.toContain(pkg);
    for (const own of ["backends/s3.js", "src/host/client.js", "src/ops/capture.js", "src/daemon/daemon.js"]) expect(s.own, own).not.toContain(own);
    expect(s.own).toContain("backends/file.js");
  });

  it("ingest into a file backup loads neither the S3 SDK nor the daemon's packages", async () => {
    const backup = await fileBackup();
    const i = loadedBy(["ingest", backup], '{"version":3,"transaction":["INSERT INTO t VALUES (2)"]}\n');
    expect(i.stdout).toContain('"version":3');
    for (const pkg of HEAVY.filter((p) => p !== "better-sqlite3")) expect(i.packages, pkg).not.toContain(pkg);
    expect(i.own).not.toContain("backends/s3.js");
    // The command line names its command: the other command modules stay unloaded.
    const commands = [...i.own].filter((f) => f.startsWith(`src${path.sep}commands${path.sep}`) && !/(common|progress|interrupt)\.js$/.test(f));
    expect(commands).toEqual([path.join("src", "commands", "ingest.js")]);
  });

  it("--help and a mistyped command still know every command", async () => {
    const h = loadedBy(["--help"]);
    for (const name of ["init", "ingest", "status", "restore", "compact", "rewind", "verify", "copy", "watch", "daemon", "cln"]) expect(h.stdout).toMatch(new RegExp(`^  ${name} `, "m"));
    const typo = await runCli(["ingset"]);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain("(Did you mean ingest?)");
  });
});
