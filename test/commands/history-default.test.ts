/**
 * History by default: a backup with no retention setting keeps what restores to the last 24
 * hours need, as the README's walkthrough shows; `--keep-for 0` keeps the live generation only.
 */
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { retainedGenerations, DEFAULT_RETENTION } from "../../src/model/retention.js";
import { runCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";

const CHANGES = [
  { version: 1, transaction: ["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"] },
  { version: 2, transaction: [{ sql: "INSERT INTO notes (body) VALUES (?)", params: ["hello"] }] },
  { version: 3, transaction: ["INSERT INTO notes (body) VALUES ('world')"] },
];

async function walkthrough(compactFlags: string[]): Promise<{ dir: string; backup: string }> {
  const dir = tmpDir();
  const backup = path.join(dir, "backup");
  expect((await runCli(["init", backup])).code).toBe(0);
  const r = await runCli(["ingest", backup], { input: CHANGES.map((c) => JSON.stringify(c)).join("\n") + "\n" });
  expect(r.code, r.stderr).toBe(0);
  const c = await runCli(["compact", backup, "-q", ...compactFlags]);
  expect(c.code, c.stderr).toBe(0);
  return { dir, backup };
}

describe("history by default", () => {
  it("keeps 24 hours: after the walkthrough's compaction, version 1 still restores, and status says why", async () => {
    const { dir, backup } = await walkthrough([]);
    const status = await runCli(["status", backup]);
    expect(status.stdout).toMatch(/restorable\s+versions 1\.\.3/);
    expect(status.stdout).toMatch(/settings\s+write-ahead, compression none, not encrypted, keeps 1d of history \(the default; --keep-for 0 for none\)/);
    const r = await runCli(["restore", backup, path.join(dir, "before.db"), "--version", "1"]);
    expect(r.code, r.stderr).toBe(0);
    const db = new Database(path.join(dir, "before.db"), { readonly: true });
    expect(db.prepare("SELECT count(*) FROM notes").pluck().get()).toBe(0);
    db.close();
  });

  it("--keep-for 0 keeps the live generation only", async () => {
    const { dir, backup } = await walkthrough(["--keep-for", "0"]);
    const status = await runCli(["status", backup]);
    // The base is at version 2: compaction leaves the last change rewindable.
    expect(status.stdout).toMatch(/restorable\s+versions 2\.\.3/);
    expect(status.stdout).toMatch(/keeps the live generation only/);
    const r = await runCli(["restore", backup, path.join(dir, "before.db"), "--version", "1"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/version 1 is not held/);
  });

  it("the default keeps the generations a restore to 24 hours ago needs, and no older", () => {
    const h = 3_600_000;
    const now = 100 * h;
    // Bases made 50 h, 30 h, 20 h and 1 h ago; the live one last.
    const gens = [50, 30, 20, 1].map((ago, i) => ({ id: i, baseTimestamp: now - ago * h }));
    // Generation 1 (30 h ago until 20 h ago) holds the moment 24 hours ago; generation 0 does not.
    expect([...retainedGenerations(gens, DEFAULT_RETENTION, now)].sort()).toEqual([1, 2, 3]);
    expect([...retainedGenerations(gens, { maxAgeMs: 0 }, now)]).toEqual([3]);
    expect([...retainedGenerations([{ id: 0, baseTimestamp: undefined }, { id: 1, baseTimestamp: now }], { maxAgeMs: 0 }, now)]).toEqual([1]);
  });
});
