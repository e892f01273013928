/**
 * Retention and point-in-time restore: what compaction keeps, restore --time, and the restore
 * points status lists.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { retainedGenerations } from "../../src/model/retention.js";
import { runCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";

const T0 = Date.parse("2026-11-20T00:00:00Z");
const minute = 60_000;

/** Changes 1..n, change v made at T0 + v minutes. */
function changes(from: number, to: number): string {
  const out: string[] = [];
  for (let v = from; v <= to; v++) {
    const sql = v === 1 ? "CREATE TABLE t (x INTEGER)" : `INSERT INTO t VALUES (${v})`;
    out.push(JSON.stringify({ version: v, timestamp: new Date(T0 + v * minute).toISOString(), transaction: [sql] }));
  }
  return `${out.join("\n")}\n`;
}

async function cli(args: string[], input?: string): Promise<string> {
  const r = await runCli(args, input === undefined ? {} : { input });
  expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

function maxRow(file: string): number {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare("SELECT coalesce(max(x), 1) FROM t").pluck().get() as number;
  } finally {
    db.close();
  }
}

describe("point-in-time restore", () => {
  it("restores as of the last change made by a moment, across retained generations", async () => {
    const dir = tmpDir();
    const b = path.join(dir, "backup");
    await cli(["init", b, "--keep-bases", "5"]);
    await cli(["ingest", b], changes(1, 20));
    await cli(["compact", b, "-q"]);
    await cli(["ingest", b], changes(21, 40));
    await cli(["compact", b, "-q"]);

    const at = async (iso: string) => {
      const out = path.join(dir, `at-${Date.parse(iso)}.db`);
      const r = JSON.parse(await cli(["restore", b, out, "--time", iso, "--json"]));
      expect(maxRow(out)).toBe(r.version > 1 ? r.version : 1);
      return r.version as number;
    };
    expect(await at(new Date(T0 + 7 * minute + 30_000).toISOString())).toBe(7); // between 7 and 8
    expect(await at(new Date(T0 + 8 * minute).toISOString())).toBe(8); // exactly 8
    expect(await at(new Date(T0 + 33 * minute).toISOString())).toBe(33);
    expect(await at("2030-01-01T00:00:00Z")).toBe(40);

    const early = await runCli(["restore", b, path.join(dir, "early.db"), "--time", "2026-11-19T00:00:00Z"]);
    expect(early.code).toBe(1);
    expect(early.stderr).toMatch(/2026-11-19T00:00:00.000Z is before the oldest restore point of .*: it holds 2026-11-20T00:01:00.000Z \(version 1\) to 2026-11-20T00:40:00.000Z \(version 40\)/);
    expect(early.stderr).toMatch(/^Try: pick a time from 2026-11-20T00:01:00.000Z on/m);
    expect(fs.existsSync(path.join(dir, "early.db"))).toBe(false);

    const both = await runCli(["restore", b, path.join(dir, "x.db"), "--time", "2026-11-20T00:10:00Z", "--version", "3"]);
    expect(both.code).toBe(2);
    const bad = await runCli(["restore", b, path.join(dir, "x.db"), "--time", "yesterday"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/expected an ISO-8601 time/);
  });

  it("status lists the restore points: versions, times, generations", async () => {
    const dir = tmpDir();
    const b = path.join(dir, "backup");
    await cli(["init", b, "--keep-bases", "1"]);
    await cli(["ingest", b], changes(1, 10));
    await cli(["compact", b, "-q"]);
    await cli(["ingest", b], changes(11, 12));
    const out = await cli(["status", b]);
    expect(out).toMatch(/^restorable\s+versions 1\.\.12, 2026-11-20T00:01:00\.000Z \.\. 2026-11-20T00:12:00\.000Z$/m);
    expect(out).toMatch(/^generations\s+no base: 1\.\.10, from 2026-11-20T00:01:00\.000Z; base 9: 9\.\.12, from 2026-11-20T00:09:00\.000Z \(live\)$/m);
    const json = JSON.parse(await cli(["status", b, "--json"]));
    expect(json.generations).toHaveLength(2);
  });

  it("a second compaction with nothing new is skipped, not a second copy of the same base", async () => {
    const dir = tmpDir();
    const b = path.join(dir, "backup");
    await cli(["init", b, "--keep-bases", "3"]);
    await cli(["ingest", b], changes(1, 10));
    await cli(["compact", b, "-q"]);
    const again = await runCli(["compact", b, "--json"]);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).skipped).toMatch(/nothing precedes the last change but the base/);
    const s = JSON.parse(await cli(["status", b, "--json"]));
    expect(s.generations.map((g: { baseVersion: number }) => g.baseVersion)).toEqual([0, 9]);
  });
});

describe("retention", () => {
  it("keeps what the policy asks for, by count and by age", () => {
    const g = (id: string, minutesAgo: number | undefined) => ({ id, baseTimestamp: minutesAgo === undefined ? undefined : 1_000_000_000 - minutesAgo * minute });
    const now = 1_000_000_000;
    const gens = [g("a", 300), g("b", 200), g("c", 100), g("live", 10)];
    expect([...retainedGenerations(gens, {}, now)]).toEqual(["live"]);
    expect([...retainedGenerations(gens, { bases: 2 }, now)].sort()).toEqual(["b", "c", "live"]);
    // 150 minutes back: c (until 10 minutes ago) and b (until 100 minutes ago) hold times in the window.
    expect([...retainedGenerations(gens, { maxAgeMs: 150 * minute }, now)].sort()).toEqual(["b", "c", "live"]);
    expect([...retainedGenerations(gens, { maxAgeMs: 50 * minute }, now)].sort()).toEqual(["c", "live"]);
    // A generation whose times are sealed (no key) is kept rather than guessed about.
    expect([...retainedGenerations([g("x", 500), g("y", undefined), g("live", 5)], { maxAgeMs: minute }, now)].sort()).toEqual(["live", "x"]);
  });

  it("compaction with --keep-for keeps recent generations and drops old ones; verify reads every one", async () => {
    const dir = tmpDir();
    const b = path.join(dir, "backup");
    const now = Date.now();
    const at = (v: number, hoursAgo: number) =>
      JSON.stringify({ version: v, timestamp: now - hoursAgo * 3_600_000, transaction: [v === 1 ? "CREATE TABLE t (x INTEGER)" : `INSERT INTO t VALUES (${v})`] });
    await cli(["init", b]);
    await cli(["ingest", b], `${[1, 2, 3, 4, 5].map((v) => at(v, 100 - v)).join("\n")}\n`); // four days ago
    await cli(["compact", b, "-q", "--keep-for", "2d"]); // base 4, from ~96 hours ago
    await cli(["ingest", b], `${[6, 7, 8].map((v) => at(v, 30 - v)).join("\n")}\n`); // about a day ago
    await cli(["compact", b, "-q"]); // base 7; the backup remembers --keep-for 2d
    const s = JSON.parse(await cli(["status", b, "--json"]));
    // Generation "base 4" covers times until base 7 (~23 hours ago): inside two days, so kept. The
    // first changes ended at base 4, ~96 hours ago: outside, so dropped.
    expect(s.generations.map((g: { baseVersion: number }) => g.baseVersion)).toEqual([4, 7]);
    expect(s.firstVersion).toBe(4);
    const v = await runCli(["verify", b]);
    expect(v.code, v.stdout).toBe(0);
    expect(v.stdout).toMatch(/^ok: /m);
  });
});

describe("verify", () => {
  it("pinpoints a corrupted snapshot by file, offset and version", async () => {
    const dir = tmpDir();
    const host = path.join(dir, "host.db");
    const db = new Database(host);
    db.exec("CREATE TABLE t (x TEXT)");
    for (let i = 0; i < 200; i++) db.exec(`INSERT INTO t VALUES ('${"row ".repeat(50)}${i}')`);
    db.close();
    const b = path.join(dir, "backup");
    await cli(["init", b, "--from-db", host, "--version", "3"]);
    await cli(["ingest", b], `${JSON.stringify({ version: 4, transaction: ["INSERT INTO t VALUES ('x')"] })}\n`);
    const blob = fs.readdirSync(b).find((n) => n.endsWith(".tms"))!;
    const bytes = fs.readFileSync(path.join(b, blob));
    bytes[5000]! ^= 0x40;
    fs.writeFileSync(path.join(b, blob), bytes);
    const r = await runCli(["verify", b]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`^FAULT E_CORRUPT: .*${blob}, offset 24, version 3: snapshot frame checksum mismatch$`, "m"));
    expect(r.stderr).toMatch(/^Error: verify found 1 problem\(s\)/m);
    // status reads the live base through too, and a writer refuses it at open.
    const st = await runCli(["status", b]);
    expect(st.code).toBe(1);
    expect(st.stdout).toMatch(new RegExp(`^DAMAGED .*${blob}, offset 24, version 3: snapshot frame checksum mismatch`, "m"));
    const w = await runCli(["ingest", b], { input: `${JSON.stringify({ version: 5, transaction: ["INSERT INTO t VALUES ('y')"] })}\n` });
    expect(w.code).toBe(1);
    expect(w.stderr).toMatch(new RegExp(`^Error: .*${blob}.*snapshot frame checksum mismatch`, "m"));
  });
});
