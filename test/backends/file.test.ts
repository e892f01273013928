import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { afterEach, describe, expect, it, vi } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import type { Backend } from "../../src/backup/backup.js";
import { TidemarkError } from "../../src/util/errors.js";
import { applyChange } from "../../src/ops/ingest.js";
import type { Logger } from "../../src/util/logger.js";
import { backendConformance, collect, tx, type StoredTarget } from "../helpers/backend-conformance.js";
import { tmpDir } from "../helpers/tmp.js";
import { decodeIdentity } from "../../src/backup/documents.js";
import { encodeChangeRecord } from "../../src/format/record-codec.js";

/** Overwrites bytes of a log or blob file in place: damage on disk. */
async function overwrite(location: string, target: StoredTarget, bytes: Buffer): Promise<void> {
  const file = "generation" in target ? path.join(location, `log-${String(target.generation).padStart(10, "0")}.tml`) : path.join(location, target.blob);
  const fd = fs.openSync(file, "r+");
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, target.offset);
  } finally {
    fs.closeSync(fd);
  }
}

backendConformance("file", {
  newLocation: () => path.join(tmpDir(), "backup"),
  exclusiveWriter: true,
  overwrite,
});

backendConformance("file, group commit", {
  newLocation: () => path.join(tmpDir(), "backup"),
  exclusiveWriter: true,
  options: { groupCommit: true },
  overwrite,
});

/** A logger that records warnings. */
function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const log = {
    warnings,
    debug() {},
    info() {},
    warn(_f: Record<string, unknown>, msg: string) {
      warnings.push(msg);
    },
    error() {},
    child: () => log,
  };
  return log;
}

async function newBackup(versions: number): Promise<{ dir: string; logFile: string }> {
  const dir = path.join(tmpDir(), "backup");
  const b = await openBackend(dir, { mode: "create" });
  await applyChange(b, { version: 1, transaction: ["CREATE TABLE t (v INTEGER, tag TEXT)"] });
  for (let v = 2; v <= versions; v++) await applyChange(b, { version: v, transaction: tx(v) });
  await b.close();
  return { dir, logFile: path.join(dir, "log-0000000001.tml") };
}

async function openErr(dir: string, mode: "read" | "write"): Promise<TidemarkError> {
  const err = await openBackend(dir, { mode }).then(
    (b) => {
      void b.close();
      throw new Error("expected the open to fail");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TidemarkError);
  return err as TidemarkError;
}

describe("file backend: torn tails", () => {
  it("readers ignore a torn tail without touching the file; the writer drops it and logs", async () => {
    const { dir, logFile } = await newBackup(5);
    const intact = fs.readFileSync(logFile);
    // A crash mid-append: the first 30 bytes of a further record.
    const b = await openBackend(dir, { mode: "write" });
    await applyChange(b, { version: 6, transaction: tx(6) });
    await b.close();
    const withSix = fs.readFileSync(logFile);
    fs.writeFileSync(logFile, withSix.subarray(0, intact.length + 30));
    const torn = fs.readFileSync(logFile);

    const log = recordingLogger();
    const r = await openBackend(dir, { mode: "read", log });
    const status = await r.status();
    expect(status.version).toBe(5);
    expect(status.tornTail).toMatchObject({ offset: intact.length, bytes: 30 });
    expect((await collect(r, { from: 1 })).map((c) => c.version)).toEqual([1, 2, 3, 4, 5]);
    await r.close();
    expect(log.warnings.join()).toMatch(/torn/);
    expect(fs.readFileSync(logFile).equals(torn)).toBe(true);

    const w = await openBackend(dir, { mode: "write", log });
    expect(fs.readFileSync(logFile).equals(intact)).toBe(true);
    expect(log.warnings.join()).toContain(`30 bytes at offset ${intact.length}`);
    await applyChange(w, { version: 6, transaction: tx(6, "redo") });
    await w.close();
    const again = await openBackend(dir, { mode: "read" });
    const got = await collect(again, { from: 1 });
    expect(got.map((c) => c.version)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(got[5]!.transaction).toEqual(tx(6, "redo"));
    expect((await again.status()).tornTail).toBeUndefined();
    await again.close();
  });

  it("a complete last record that fails its checksum is damage, not a torn tail: the writer refuses it and cuts nothing", async () => {
    const { dir, logFile } = await newBackup(5);
    const bytes = fs.readFileSync(logFile);
    bytes[bytes.length - 3]! ^= 0xff; // inside the last record's checksum: every byte is there
    fs.writeFileSync(logFile, bytes);
    const r = await openBackend(dir, { mode: "read" });
    const s = await r.status();
    expect(s.version).toBe(4);
    expect(s.tornTail).toBeUndefined();
    expect(s.damage).toMatchObject({ location: logFile, intactVersion: 4 });
    await r.close();
    const err = await openErr(dir, "write");
    expect(err.code).toBe("E_CORRUPT");
    expect(err.message).toMatch(/record checksum mismatch; the record is complete, so this is damage, not a torn tail/);
    expect(fs.readFileSync(logFile).equals(bytes)).toBe(true);
  });

  it("a tail the file system filled with zeros is a torn tail", async () => {
    const { dir, logFile } = await newBackup(5);
    const intact = fs.readFileSync(logFile);
    fs.writeFileSync(logFile, Buffer.concat([intact, Buffer.alloc(4096)]));
    const log = recordingLogger();
    const w = await openBackend(dir, { mode: "write", log });
    expect(w.head().version).toBe(5);
    await w.close();
    expect(fs.readFileSync(logFile).equals(intact)).toBe(true);
    expect(log.warnings.join()).toContain(`4096 bytes at offset ${intact.length}`);
  });

  it("a crash mid-append is a torn tail even when the record's payload holds a whole encoded record", async () => {
    const { dir, logFile } = await newBackup(5);
    const intact = fs.readFileSync(logFile);
    const inner = encodeChangeRecord({ version: 99, timestamp: 1, transaction: ["SELECT 1"] });
    const w = await openBackend(dir, { mode: "write" });
    await applyChange(w, { version: 6, transaction: [{ sql: "INSERT INTO t VALUES (?, ?)", params: [inner, Buffer.alloc(3000, 1)] }] });
    await w.close();
    const whole = fs.readFileSync(logFile);
    // The crash came after the embedded record reached the disk, before the rest did.
    const cut = whole.indexOf(inner) + inner.length + 10;
    fs.writeFileSync(logFile, whole.subarray(0, cut));
    const again = await openBackend(dir, { mode: "write" });
    expect(again.head().version).toBe(5);
    await again.close();
    expect(fs.readFileSync(logFile).equals(intact)).toBe(true);
  });

  it("a last record whose bytes are zero from a sector boundary on is a torn tail (the file grew before its data landed)", async () => {
    const { dir, logFile } = await newBackup(5);
    const intact = fs.readFileSync(logFile);
    const w = await openBackend(dir, { mode: "write" });
    await applyChange(w, { version: 6, transaction: [{ sql: "INSERT INTO t VALUES (?, ?)", params: [6n, "x".repeat(3000)] }] });
    await w.close();
    const whole = fs.readFileSync(logFile);
    const boundary = Math.ceil((intact.length + 100) / 512) * 512;
    whole.fill(0, boundary);
    fs.writeFileSync(logFile, whole);
    const log = recordingLogger();
    const again = await openBackend(dir, { mode: "write", log });
    expect(again.head().version).toBe(5);
    await again.close();
    expect(log.warnings.join()).toContain(`${whole.length - intact.length} bytes at offset ${intact.length}`);
    expect(fs.readFileSync(logFile).equals(intact)).toBe(true);
  });

  it("a generations.json that cannot be read stops the writer; history is never deleted because a read failed", async () => {
    const { dir } = await newBackup(5);
    const w = await openBackend(dir, { mode: "write", retention: { bases: 3 } });
    await w.compact({ version: 4, timestamp: 4, snapshot: async function* () { yield Buffer.from("four"); } });
    await w.close();
    const before = fs.readdirSync(dir).sort();
    const manifest = path.join(dir, "generations.json");
    fs.rmSync(manifest);
    fs.mkdirSync(manifest);
    for (const mode of ["read", "write"] as const) {
      const err = await openErr(dir, mode);
      expect(err.code).toBe("E_BACKEND");
      expect(err.message).toContain("generations.json");
    }
    expect(fs.readdirSync(dir).sort()).toEqual(before);
    expect(fs.existsSync(path.join(dir, "log-0000000001.tml"))).toBe(true);
  });

  it("damage before the tail is an error naming the file, the offset and the version", async () => {
    const { dir, logFile } = await newBackup(8);
    const bytes = fs.readFileSync(logFile);
    // Find the record of version 3 and damage its body.
    const b = await openBackend(dir, { mode: "read" });
    await b.close();
    const offsets: number[] = [];
    for (let i = bytes.indexOf("TDMK"); i >= 0; i = bytes.indexOf("TDMK", i + 1)) offsets.push(i);
    const third = offsets[2]!;
    bytes[third + 30]! ^= 0x01;
    fs.writeFileSync(logFile, bytes);
    // A writer refuses it.
    const err = await openErr(dir, "write");
    expect(err.code).toBe("E_CORRUPT");
    expect(err.message).toContain(logFile);
    expect(err.message).toContain(`offset ${third}`);
    expect(err.message).toContain("version 3");
    // A reader reads what precedes the damage, and says where the damage is.
    const r = await openBackend(dir, { mode: "read" });
    const s = await r.status();
    expect(s.damage).toEqual({ location: logFile, offset: third, message: err.message, intactVersion: 2 });
    expect(s.version).toBe(2);
    expect((await collect(r, { from: 1, to: 2 })).map((c) => c.version)).toEqual([1, 2]);
    await r.close();
    // Nothing was written: the damage is still there for an operator to inspect.
    expect(fs.readFileSync(logFile).equals(bytes)).toBe(true);
  });

  it("a damaged header before the tail is an error, not a torn tail", async () => {
    const { dir, logFile } = await newBackup(6);
    const bytes = fs.readFileSync(logFile);
    const offsets: number[] = [];
    for (let i = bytes.indexOf("TDMK"); i >= 0; i = bytes.indexOf("TDMK", i + 1)) offsets.push(i);
    bytes.writeUInt32LE(0xffffff, offsets[1]! + 20); // body length of version 2
    fs.writeFileSync(logFile, bytes);
    const err = await openErr(dir, "write");
    expect(err.code).toBe("E_CORRUPT");
    expect(err.message).toContain(`offset ${offsets[1]}`);
    expect(fs.readFileSync(logFile).equals(bytes)).toBe(true);
  });
});

describe("file backend: failed writes", () => {
  afterEach(() => vi.restoreAllMocks());

  it("a disk-full error mid-append loses nothing and leaves no partial record (fault injected)", async () => {
    // ENOSPC half-way through a write cannot be produced on demand here, so fs.writeSync is mocked
    // to write half of the record and then fail, as a full disk does.
    const { dir, logFile } = await newBackup(3);
    const before = fs.readFileSync(logFile);
    const b = await openBackend(dir, { mode: "write" });
    const real = fs.writeSync;
    const spy = vi.spyOn(fs, "writeSync").mockImplementation(((fd: number, buf: Uint8Array, off: number, len: number, pos: number) => {
      if (len > 8) {
        real(fd, buf, off, Math.floor(len / 2), pos);
        throw Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
      }
      return real(fd, buf, off, len, pos);
    }) as typeof fs.writeSync);
    const err = await applyChange(b, { version: 4, transaction: tx(4) }).catch((e: unknown) => e);
    spy.mockRestore();
    expect(err).toBeInstanceOf(TidemarkError);
    expect((err as TidemarkError).code).toBe("E_BACKEND");
    expect((err as TidemarkError).message).toMatch(/ENOSPC/);
    expect((err as TidemarkError).hint).toMatch(/free disk space/);
    expect(b.head()).toEqual({ version: 3, prevVersion: 2 });
    expect(fs.readFileSync(logFile).equals(before)).toBe(true);

    await applyChange(b, { version: 4, transaction: tx(4) });
    await b.close();
    const r = await openBackend(dir, { mode: "read" });
    expect((await collect(r, { from: 1 })).map((c) => c.version)).toEqual([1, 2, 3, 4]);
    expect((await r.status()).tornTail).toBeUndefined();
    await r.close();
  });

  it("a failed fdatasync is reported and the record is cut back (fault injected)", async () => {
    const { dir, logFile } = await newBackup(2);
    const before = fs.readFileSync(logFile);
    const b = await openBackend(dir, { mode: "write" });
    const spy = vi.spyOn(fs, "fdatasyncSync").mockImplementationOnce(() => {
      throw Object.assign(new Error("input/output error"), { code: "EIO" });
    });
    await expect(applyChange(b, { version: 3, transaction: tx(3) })).rejects.toThrow(/EIO/);
    spy.mockRestore();
    expect(fs.readFileSync(logFile).equals(before)).toBe(true);
    await b.close();
  });
});

describe("file backend: failed writes with group commit", () => {
  afterEach(() => vi.restoreAllMocks());

  it("a failed asynchronous fdatasync cuts the record back and loses nothing (fault injected)", async () => {
    const { dir, logFile } = await newBackup(2);
    const before = fs.readFileSync(logFile);
    const b = await openBackend(dir, { mode: "write", groupCommit: true });
    // An I/O error from the disk cannot be produced on demand, so fs.fdatasync is mocked to fail once.
    const spy = vi.spyOn(fs, "fdatasync").mockImplementationOnce(((_fd: number, cb: (err: Error | null) => void) =>
      cb(Object.assign(new Error("input/output error"), { code: "EIO" }))) as typeof fs.fdatasync);
    await expect(applyChange(b, { version: 3, transaction: tx(3) })).rejects.toThrow(/EIO/);
    spy.mockRestore();
    expect(fs.readFileSync(logFile).equals(before)).toBe(true);
    await applyChange(b, { version: 3, transaction: tx(3) });
    await b.close();
    const r = await openBackend(dir, { mode: "read" });
    expect((await collect(r, { from: 1 })).map((c) => c.version)).toEqual([1, 2, 3]);
    await r.close();
  });
});

describe("file backend: backups from tidemark 0.1", () => {
  it("a format-1 backup (documents without checksums) is read as it is, and its first writer adds them", async () => {
    const { dir } = await newBackup(5);
    const w = await openBackend(dir, { mode: "write", retention: { bases: 1 } });
    await w.compact({ version: 4, timestamp: 4, snapshot: async function* () { yield Buffer.from("four"); } });
    await w.close();
    // What tidemark 0.1 wrote: the same logs and blobs, plain JSON documents.
    const created = JSON.parse(fs.readFileSync(path.join(dir, "tidemark.json"), "utf8")).created;
    fs.writeFileSync(path.join(dir, "tidemark.json"), JSON.stringify({ format: "tidemark-file", formatVersion: 1, created, compression: "none", encrypted: false, retention: { bases: 1 } }, null, 2) + "\n");
    fs.writeFileSync(path.join(dir, "generations.json"), '{"retained":[1]}\n');

    const r = await openBackend(dir, { mode: "read" });
    expect((await r.status()).generations.map((g) => [g.firstVersion, g.lastVersion])).toEqual([[1, 5], [4, 5]]);
    await r.close();
    expect(fs.readFileSync(path.join(dir, "generations.json"), "utf8")).toBe('{"retained":[1]}\n');

    const again = await openBackend(dir, { mode: "write" });
    await applyChange(again, { version: 6, transaction: tx(6) });
    await again.close();
    expect(JSON.parse(fs.readFileSync(path.join(dir, "tidemark.json"), "utf8"))).toMatchObject({ format: "tidemark", formatVersion: 2, retention: { bases: 1 }, crc32: expect.stringMatching(/^[0-9a-f]{8}$/) });
    expect(JSON.parse(fs.readFileSync(path.join(dir, "generations.json"), "utf8"))).toMatchObject({ retained: [1], crc32: expect.any(String) });
    const after = await openBackend(dir, { mode: "read" });
    expect((await collect(after, { from: 1, to: 3 })).map((c) => c.version)).toEqual([1, 2, 3]);
    expect(after.head().version).toBe(6);
    await after.close();
  });

  it("an S3 backup from tidemark 0.1 is refused with the way to convert it", () => {
    const err = (() => {
      try {
        decodeIdentity(Buffer.from('{"format":"tidemark-s3","formatVersion":1,"created":"x"}'), "s3://b/p/tidemark.json");
      } catch (e) {
        return e as TidemarkError;
      }
      throw new Error("expected a refusal");
    })();
    expect(err.code).toBe("E_CORRUPT");
    expect(err.hint).toMatch(/tidemark copy/);
  });
});

describe("file backend: lock and layout", () => {
  it("refuses a second writer in another process, naming its PID", async () => {
    const { dir } = await newBackup(1);
    // A real process holds the lock: a sleeping child whose PID is written as the holder.
    const child = spawn("sleep", ["30"]);
    try {
      fs.writeFileSync(path.join(dir, "LOCK"), JSON.stringify({ pid: child.pid, host: (await import("node:os")).hostname() }));
      const err = await openErr(dir, "write");
      expect(err.code).toBe("E_LOCKED");
      expect(err.message).toContain(`PID ${child.pid}`);
      expect(err.hint).toContain(`PID ${child.pid}`);
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("takes over a lock whose process is gone", async () => {
    const { dir } = await newBackup(1);
    const child = spawn("true");
    await new Promise((r) => child.on("exit", r));
    fs.writeFileSync(path.join(dir, "LOCK"), JSON.stringify({ pid: child.pid, host: (await import("node:os")).hostname() }));
    const log = recordingLogger();
    const b = await openBackend(dir, { mode: "write", log });
    expect(log.warnings.join()).toMatch(/taking over a lock/);
    await b.close();
    expect(fs.existsSync(path.join(dir, "LOCK"))).toBe(false);
  });

  it("a writer cleans up what an interrupted compaction left", async () => {
    const { dir } = await newBackup(4);
    fs.writeFileSync(path.join(dir, "snap-00000000000000000003-0badc0de.tms.tmp"), "partial");
    fs.writeFileSync(path.join(dir, "snap-00000000000000000003-00c0ffee.tms"), "orphan");
    fs.writeFileSync(path.join(dir, "log-0000000002.tml.tmp"), "partial");
    const b: Backend = await openBackend(dir, { mode: "write" });
    // log-…1.tmi: the log index the seeding writer's close left (docs/format.md, "Log index").
    expect(fs.readdirSync(dir).sort()).toEqual(["LOCK", "log-0000000001.tmi", "log-0000000001.tml", "tidemark.json"]);
    expect(b.head().version).toBe(4);
    await b.close();
  });

  it("a log of several read chunks streams whole, and a reader that stops early leaves no file open", async () => {
    const dir = path.join(tmpDir(), "backup");
    const b = await openBackend(dir, { mode: "create" });
    // 11 MiB of log: three 4 MiB reads, each started while the one before it is decoded.
    const big = (v: number) => `SELECT '${String(v).repeat(4).padEnd(256 * 1024, "x")}'`;
    await b.addChanges(Array.from({ length: 44 }, (_, i) => ({ version: i + 1, timestamp: i, transaction: [big(i + 1)] })));
    await b.close();
    const openFds = () => fs.readdirSync("/proc/self/fd").length;
    const r = await openBackend(dir, { mode: "read" });
    try {
      const all = await collect(r);
      expect(all.map((c) => c.transaction![0])).toEqual(Array.from({ length: 44 }, (_, i) => big(i + 1)));
      const before = openFds();
      for await (const c of r.streamChanges({})) {
        expect(c.version).toBe(1);
        break;
      }
      expect(openFds()).toBe(before);
    } finally {
      await r.close();
    }
  });

  it("after a compaction, the superseded log and snapshots are gone", async () => {
    const { dir } = await newBackup(6);
    const b = await openBackend(dir, { mode: "write" });
    await b.compact({ version: 5, timestamp: 5, snapshot: async function* () { yield Buffer.from("five"); } });
    await b.compact({ version: 5, timestamp: 5, snapshot: async function* () { yield Buffer.from("five again"); } });
    await b.close();
    const names = fs.readdirSync(dir).sort();
    expect(names).toHaveLength(5);
    expect(names[0]).toBe("generations.json");
    expect(JSON.parse(fs.readFileSync(path.join(dir, "generations.json"), "utf8"))).toMatchObject({ retained: [] });
    // The superseded generations' indexes went with their logs.
    expect(names[1]).toBe("log-0000000003.tmi");
    expect(names[2]).toBe("log-0000000003.tml");
    expect(names[3]).toMatch(/^snap-00000000000000000005-[0-9a-f]{8}\.tms$/);
    expect(names[4]).toBe("tidemark.json");
  });
});
