/**
 * `tidemark copy` of whole backups, history included: retained generations, a rewind, an
 * encrypted and compressed source, re-keying on the way, and what a failed copy leaves behind.
 */
import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli, spawnCli } from "../helpers/cli.js";
import { startS3, type S3Server } from "../helpers/s3.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3.stop();
});

const T0 = Date.parse("2026-11-20T00:00:00Z");
const minute = 60_000;

/** Change v, made at T0 + v minutes; `tag` tells a resent version from the one it replaces. */
function change(v: number, tag = ""): string {
  const sql = v === 1 ? "CREATE TABLE t (v INTEGER, note TEXT)" : `INSERT INTO t VALUES (${v}, 'row ${v}${tag} ${"x".repeat(200)}')`;
  return JSON.stringify({ version: v, timestamp: new Date(T0 + v * minute).toISOString(), transaction: [sql] });
}
const changes = (from: number, to: number) => `${Array.from({ length: to - from + 1 }, (_, i) => change(from + i)).join("\n")}\n`;

async function cli(args: string[], input?: string): Promise<string> {
  const r = await runCli(args, input === undefined ? {} : { input });
  expect(r.code, `tidemark ${args.join(" ")}:\n${r.stderr}`).toBe(0);
  return r.stdout;
}

describe("tidemark copy", () => {
  it("copies every retained generation of an encrypted, compressed backup, file -> S3 -> file, re-keyed on the way", async () => {
    const dir = tmpDir();
    const key1 = path.join(dir, "key-1");
    const key2 = path.join(dir, "key-2");
    fs.writeFileSync(key1, "a1".repeat(32));
    fs.writeFileSync(key2, "b2".repeat(32));
    const k1 = ["--key", `1=file:${key1}`];
    const src = path.join(dir, "src");
    await cli(["init", src, ...k1, "--compression", "brotli", "--keep-bases", "5"]);
    await cli(["ingest", src, ...k1], changes(1, 20));
    await cli(["compact", src, ...k1, "-q"]);
    await cli(["ingest", src, ...k1], changes(21, 30));
    await cli(["rewind", src, ...k1]);
    await cli(["ingest", src, ...k1], `${change(30, " again")}\n`);
    await cli(["compact", src, ...k1, "-q"]);
    await cli(["ingest", src, ...k1], changes(31, 35));

    const remote = s3.location();
    const toS3 = JSON.parse(await cli(["copy", src, remote, ...k1, "--json"]));
    expect(toS3).toMatchObject({ version: 35, snapshots: 2 });
    const back = path.join(dir, "back");
    await cli(["copy", remote, back, "--key", `2=file:${key2}`, "--decrypt-key", `1=file:${key1}`, "-q"]);

    const statusOf = async (loc: string, keys: string[]) => JSON.parse(await cli(["status", loc, "--json", ...keys]));
    const srcStatus = await statusOf(src, k1);
    expect(srcStatus.generations).toHaveLength(3);
    const withBoth = ["--key", `2=file:${key2}`, "--decrypt-key", `1=file:${key1}`];
    const checks: [string, string[]][] = [[remote, k1], [back, ["--key", `2=file:${key2}`]]];
    for (const [loc, keys] of checks) {
      const st = await statusOf(loc, keys);
      // The same bases, from the same moments. (How far an older generation reaches differs: on
      // S3 the change objects after a base serve every generation, up to the head.)
      const bases = (gens: { lastVersion: number }[]) => gens.map(({ lastVersion: _, ...g }) => g);
      expect(bases(st.generations)).toEqual(bases(srcStatus.generations));
      expect({ version: st.version, prevVersion: st.prevVersion, firstVersion: st.firstVersion }).toEqual({ version: 35, prevVersion: 34, firstVersion: 1 });
      expect(st.settings).toEqual({ compression: "brotli", encrypted: true, retention: { bases: 5 } });
    }
    // Back in a file backup, each generation reaches as far as the source's does: no more.
    expect((await statusOf(back, ["--key", `2=file:${key2}`])).generations).toEqual(srcStatus.generations);
    // Every version, in every generation, restores the same from all three.
    for (const v of [1, 12, 20, 25, 30, 35]) {
      await cli(["restore", src, path.join(dir, `src-${v}.db`), "--version", String(v), "-q", ...k1]);
      await cli(["restore", remote, path.join(dir, `s3-${v}.db`), "--version", String(v), "-q", ...k1]);
      await cli(["restore", back, path.join(dir, `back-${v}.db`), "--version", String(v), "-q", ...withBoth]);
      expectSameDb(path.join(dir, `s3-${v}.db`), path.join(dir, `src-${v}.db`));
      expectSameDb(path.join(dir, `back-${v}.db`), path.join(dir, `src-${v}.db`));
    }
    // The rewound version 30 never comes back; the one sent again does.
    const at30 = await cli(["restore", back, path.join(dir, "t30.db"), "--time", new Date(T0 + 30 * minute + 1).toISOString(), "--json", ...withBoth]);
    expect(JSON.parse(at30).version).toBe(30);
    expectSameDb(path.join(dir, "t30.db"), path.join(dir, "src-30.db"));

    // Re-keyed: the file copy needs only the new key, and the old one cannot read it.
    const report = JSON.parse(await cli(["verify", back, "--restore", "--json", "--key", `2=file:${key2}`]));
    expect(report).toMatchObject({ ok: true, restored: { version: 35 } });
    const oldKey = await runCli(["restore", back, path.join(dir, "old.db"), "--decrypt-key", `1=file:${key1}`]);
    expect(oldKey.code).toBe(1);
    expect(oldKey.stderr).toMatch(/key id 2, which was not given/);
  });

  it("copies bigint and blob parameters exactly, across a generation boundary", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "src");
    const withParams = (v: number) =>
      JSON.stringify({
        version: v,
        timestamp: new Date(T0 + v * minute).toISOString(),
        transaction:
          v === 1
            ? ["CREATE TABLE p (v INTEGER, big INTEGER, raw BLOB)"]
            : [{ sql: "INSERT INTO p VALUES (?, ?, ?)", params: [v, { $bigint: String(2n ** 62n + BigInt(v)) }, { $blob: Buffer.from([v, 0, 255]).toString("base64") }] }],
      });
    const some = (from: number, to: number) => `${Array.from({ length: to - from + 1 }, (_, i) => withParams(from + i)).join("\n")}\n`;
    await cli(["init", src, "--keep-bases", "2"]);
    await cli(["ingest", src], some(1, 10));
    await cli(["compact", src, "-q"]);
    await cli(["ingest", src], some(11, 12));
    const dst = path.join(dir, "dst");
    expect(JSON.parse(await cli(["copy", src, dst, "--json"]))).toMatchObject({ version: 12 });
    for (const v of [10, 12]) {
      await cli(["restore", src, path.join(dir, `src-${v}.db`), "--version", String(v), "-q"]);
      await cli(["restore", dst, path.join(dir, `dst-${v}.db`), "--version", String(v), "-q"]);
      expectSameDb(path.join(dir, `dst-${v}.db`), path.join(dir, `src-${v}.db`));
    }
  });

  it("copies a backup whose head was rewound right after a compaction", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "src");
    await cli(["init", src, "--keep-bases", "1"]);
    await cli(["ingest", src], changes(1, 8));
    await cli(["compact", src, "-q"]); // base 7; 8 kept separate, and in the older generation
    await cli(["rewind", src]); // the host never committed 8
    const dst = path.join(dir, "dst");
    expect(JSON.parse(await cli(["copy", src, dst, "--json"]))).toMatchObject({ version: 7 });
    const st = JSON.parse(await cli(["status", dst, "--json"]));
    expect({ version: st.version, prevVersion: st.prevVersion }).toEqual({ version: 7, prevVersion: null });
    await cli(["restore", src, path.join(dir, "src.db"), "-q"]);
    await cli(["restore", dst, path.join(dir, "dst.db"), "-q"]);
    expectSameDb(path.join(dir, "dst.db"), path.join(dir, "src.db"));
  });

  it("refuses to copy an encrypted backup without a key to write with, and creates nothing", async () => {
    const dir = tmpDir();
    const key = path.join(dir, "key");
    fs.writeFileSync(key, "c3".repeat(32));
    const src = path.join(dir, "src");
    await cli(["init", src, "--key", `1=file:${key}`]);
    await cli(["ingest", src, "--key", `1=file:${key}`], changes(1, 3));
    for (const args of [[], ["--decrypt-key", `1=file:${key}`]]) {
      const r = await runCli(["copy", src, path.join(dir, "dst"), ...args]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^Error: .*src is encrypted, and a copy is never written in the clear: it needs a key to write with$/m);
      expect(r.stderr).toMatch(/^Try: pass --key/m);
      expect(fs.existsSync(path.join(dir, "dst"))).toBe(false);
    }
  });

  it("a copy that fails half-way leaves the destination empty, ready for another try", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "src");
    await cli(["init", src, "--keep-bases", "2"]);
    await cli(["ingest", src], changes(1, 20));
    await cli(["compact", src, "-q"]);
    await cli(["ingest", src], changes(21, 30));
    await cli(["compact", src, "-q"]);
    await cli(["ingest", src], changes(31, 40));
    // Damage the older base snapshot (the live one is checked at open): the copy gets through
    // the first generation, then fails on it.
    const blob = path.join(src, fs.readdirSync(src).filter((n) => n.endsWith(".tms")).sort()[0]!);
    const bytes = fs.readFileSync(blob);
    const at = bytes.length - 100;
    bytes[at] = bytes[at]! ^ 0xff;
    fs.writeFileSync(blob, bytes);

    const dst = s3.location();
    const r = await runCli(["copy", src, dst]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^Error: .*snap-.*\.tms.*\(the copy at s3:\/\/.* was emptied again\)$/m);
    expect(JSON.parse(await cli(["status", dst, "--json"]))).toMatchObject({ version: 0 });

    // Repaired (here: the damage undone), the copy goes through without --force.
    bytes[at] = bytes[at]! ^ 0xff;
    fs.writeFileSync(blob, bytes);
    expect(JSON.parse(await cli(["copy", src, dst, "--json"]))).toMatchObject({ version: 40, changes: 40 });
  });

  it("a copy killed part-way is never taken for a backup: status, restore and writers refuse it, naming copy --force", async () => {
    const dir = tmpDir();
    const src = path.join(dir, "src");
    await cli(["init", src]);
    await cli(["ingest", src], changes(1, 8000));
    const dst = path.join(dir, "dst");
    const log = path.join(dst, "log-0000000001.tml");
    const child = spawnCli(["copy", src, dst]);
    const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
    // SIGKILL once a part of the history is in the destination: no handler runs, as with OOM.
    while (!(fs.existsSync(log) && fs.statSync(log).size > 200_000)) await new Promise((r) => setTimeout(r, 2));
    child.kill("SIGKILL");
    await exited;

    for (const args of [["status", dst], ["restore", dst, path.join(dir, "out.db")], ["ingest", dst], ["copy", src, dst]]) {
      const r = await runCli(args, { input: "" });
      expect(r.code, args.join(" ")).toBe(1);
      expect(r.stderr).toMatch(/^Error: .*dst is not a backup: it is an interrupted copy of .*src$/m);
      expect(r.stderr).toMatch(/^Try: finish it with: tidemark copy --force <source> .*dst$/m);
    }
    expect(fs.existsSync(path.join(dir, "out.db"))).toBe(false);

    expect(JSON.parse(await cli(["copy", src, dst, "--force", "--json"]))).toMatchObject({ version: 8000, changes: 8000 });
    await cli(["restore", src, path.join(dir, "a.db")]);
    await cli(["restore", dst, path.join(dir, "b.db")]);
    expectSameDb(path.join(dir, "a.db"), path.join(dir, "b.db"));
  });
});
