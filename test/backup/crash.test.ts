/**
 * Crash tests of the file backend with real processes killed by SIGKILL (the scenario is in
 * helpers/crash.ts and runs against every backend).
 */
import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { runCrashScenario } from "../helpers/crash.js";
import { tmpDir } from "../helpers/tmp.js";

describe("crash safety with SIGKILL: file backend", () => {
  it("kills during ingest, rewind, compact and restore never lose an acked change nor replay a rewound one", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    expect((await runCli(["init", backup])).code).toBe(0);
    const report = await runCrashScenario(
      dir,
      {
        location: backup,
        lockHeld: () => fs.existsSync(path.join(backup, "LOCK")),
        leftovers: () => fs.readdirSync(backup).filter((n) => n.endsWith(".tmp") || n === "LOCK"),
      },
      60,
    );
    console.log(`file crash test: ${JSON.stringify(report)}`);
  });
});
