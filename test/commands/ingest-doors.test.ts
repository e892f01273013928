/**
 * `tidemark ingest` at the version rules' doors: SQL that replays to a different database,
 * numbers JSON cannot carry exactly, timestamps going back, and a retry of the head.
 */
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";

const line = (o: object) => `${JSON.stringify(o)}\n`;

async function backup(): Promise<string> {
  const b = path.join(tmpDir(), "backup");
  expect((await runCli(["init", b])).code).toBe(0);
  const r = await runCli(["ingest", b], { input: line({ version: 1, transaction: ["CREATE TABLE t (x)"] }) });
  expect(r.code, r.stderr).toBe(0);
  return b;
}

const head = async (b: string) => JSON.parse((await runCli(["status", b, "--json"])).stdout);

describe("tidemark ingest: the version rules' doors", () => {
  it("refuses non-deterministic SQL with E_NONDETERMINISTIC and exit 1, unless --allow-nondeterministic", async () => {
    const b = await backup();
    const r = await runCli(["ingest", b], { input: line({ version: 2, transaction: ["INSERT INTO t VALUES (randomblob(8))"] }) });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/E_NONDETERMINISTIC|randomblob\(\) would give a different result/);
    expect(r.stderr).toMatch(/parameter/);
    expect((await head(b)).version).toBe(1);
    const ok = await runCli(["ingest", b, "--allow-nondeterministic"], { input: line({ version: 2, transaction: ["INSERT INTO t VALUES (randomblob(8))"] }) });
    expect(ok.code, ok.stderr).toBe(0);
    expect((await head(b)).version).toBe(2);
  });

  it("refuses 2e0 and 2^60 as versions and 1e400 as a parameter with exit 1, echoing the number as written", async () => {
    const b = await backup();
    for (const [text, message] of [
      ['{"version":2e0,"transaction":["INSERT INTO t VALUES (1)"]}', "got 2e0"],
      ['{"version":1152921504606846976,"transaction":["INSERT INTO t VALUES (1)"]}', "1152921504606846976 is larger than 9007199254740991"],
      ['{"version":2,"transaction":[{"sql":"INSERT INTO t VALUES (?)","params":[-1e400]}]}', "-1e400 is not a finite number"],
    ]) {
      const r = await runCli(["ingest", b], { input: `${text}\n` });
      expect(r.code, text).toBe(1);
      expect(r.stderr).toContain(message);
      expect(r.stderr).toContain("line 1");
    }
    expect((await head(b)).version).toBe(1);
  });

  it("stores a timestamp that goes back as the previous change's and says so; a retry of the head is unchanged", async () => {
    const b = await backup();
    const t = Date.parse("2031-05-05T00:00:00Z");
    const r = await runCli(["ingest", b], {
      input:
        line({ version: 2, timestamp: t, transaction: ["INSERT INTO t VALUES (2)"] }) +
        line({ version: 3, timestamp: new Date(t - 1000).toISOString(), transaction: ["INSERT INTO t VALUES (3)"] }) +
        line({ version: 3, transaction: ["INSERT INTO t VALUES (3)"] }),
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split("\n").map((l) => JSON.parse(l))).toEqual([
      { version: 2, action: "append" },
      { version: 3, action: "append", timestampClampedTo: t },
      { version: 3, action: "unchanged" },
    ]);
    const s = await head(b);
    expect(s.headTimestamp).toBe(t);
    expect(s.generations[0].firstTimestamp).toBeLessThanOrEqual(t);
  });
  it("clamps a redo right after a restart against the change before the head, read at open, and says so", async () => {
    const b = await backup();
    const t = Date.parse("2031-05-05T00:00:00Z");
    const first = await runCli(["ingest", b], {
      input:
        line({ version: 2, timestamp: t, transaction: ["INSERT INTO t VALUES (2)"] }) +
        line({ version: 3, timestamp: t + 1000, transaction: ["INSERT INTO t VALUES (3)"] }),
    });
    expect(first.code, first.stderr).toBe(0);
    // A new process (the restart): the redo of 3 is earlier than version 2's timestamp.
    const redo = await runCli(["ingest", b], { input: line({ version: 3, timestamp: t - 5000, transaction: ["INSERT INTO t VALUES (-3)"] }) });
    expect(redo.code, redo.stderr).toBe(0);
    expect(JSON.parse(redo.stdout)).toEqual({ version: 3, action: "rewind-then-append", timestampClampedTo: t });
    const s = await head(b);
    expect(s.version).toBe(3);
    expect(s.headTimestamp).toBe(t);
  });
});
