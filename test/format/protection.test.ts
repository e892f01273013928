/**
 * Compression and client-side encryption, end to end: what is stored, what restores, and what
 * a wrong, missing or rotated key does.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import type { BackendOptions } from "../../src/backup/backup.js";
import { TidemarkError } from "../../src/util/errors.js";
import { applyChange } from "../../src/ops/ingest.js";
import { Keyring } from "../../src/format/keyring.js";
import { encodeDocument } from "../../src/backup/documents.js";
import { restore } from "../../src/ops/restore.js";
import { runCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";
import { rows as rowsOf } from "../helpers/sqlite.js";

const SECRET_ROW = "the launch codes are 0000";

function writeKey(dir: string, name: string, byte: number): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, Buffer.alloc(32, byte).toString("hex"));
  return file;
}

function keyring(...keys: { id: number; file: string; decryptOnly?: boolean }[]): Keyring {
  return Keyring.load(keys.map((k) => ({ id: k.id, source: `file:${k.file}`, decryptOnly: k.decryptOnly ?? false })));
}

async function fill(location: string, options: Omit<BackendOptions, "mode">, from: number, to: number, mode: "create" | "write" = "create") {
  const b = await openBackend(location, { ...options, mode });
  if (from === 1) await applyChange(b, { version: 1, timestamp: 1_234_567_890_123, transaction: ["CREATE TABLE t (x TEXT)"] });
  for (let v = Math.max(from, 2); v <= to; v++) {
    await applyChange(b, { version: v, transaction: [{ sql: "INSERT INTO t VALUES (?)", params: [`${SECRET_ROW} ${v} ${"padding ".repeat(20)}`] }] });
  }
  return b;
}

const rows = (file: string): unknown[] => rowsOf(file, "SELECT x FROM t");

function allBytes(dir: string): Buffer {
  return Buffer.concat(fs.readdirSync(dir).map((n) => fs.readFileSync(path.join(dir, n))));
}

async function codeOf(p: Promise<unknown>): Promise<TidemarkError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TidemarkError);
  return err as TidemarkError;
}

describe("compression", () => {
  it("gzip, brotli and zstd shrink what is stored, and a backup of mixed codecs restores", async () => {
    const dir = tmpDir();
    const sizes: Record<string, number> = {};
    for (const compression of ["none", "gzip", "brotli", "zstd"] as const) {
      const b = await fill(path.join(dir, compression), { compression }, 1, 40);
      sizes[compression] = (await b.status()).bytes;
      await b.close();
    }
    expect(sizes.gzip).toBeLessThan(sizes.none! * 0.6);
    expect(sizes.brotli).toBeLessThan(sizes.none! * 0.6);
    expect(sizes.zstd).toBeLessThan(sizes.none! * 0.6);

    // One backup written with each codec in turn, then compacted and restored.
    const mixed = path.join(dir, "mixed");
    await (await fill(mixed, { compression: "none" }, 1, 10)).close();
    await (await fill(mixed, { compression: "gzip" }, 11, 20, "write")).close();
    await (await fill(mixed, { compression: "zstd" }, 21, 30, "write")).close();
    const b = await fill(mixed, { compression: "brotli", brotliQuality: 5 }, 31, 40, "write");
    await restore(b, path.join(dir, "mixed.db"));
    expect(rows(path.join(dir, "mixed.db"))).toHaveLength(39);
    // Each record says how it was sealed: byte 7 of its header.
    const log = fs.readFileSync(path.join(mixed, "log-0000000001.tml"));
    const algos = new Set<number>();
    for (let i = log.indexOf("TDMK"); i >= 0; i = log.indexOf("TDMK", i + 1)) algos.add(log[i + 7]!);
    expect([...algos].sort()).toEqual([0, 1, 2, 3]);
    await b.close();
  });

  it("a backup remembers the compression it was created with", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "b");
    expect((await runCli(["init", backup, "--compression", "brotli"])).code).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(backup, "tidemark.json"), "utf8"))).toMatchObject({ compression: "brotli", encrypted: false });
    const r = await runCli(["ingest", backup], {
      input: `${JSON.stringify({ version: 1, transaction: ["CREATE TABLE t (x TEXT)", `INSERT INTO t VALUES ('${"abc".repeat(500)}')`] })}\n`,
    });
    expect(r.code, r.stderr).toBe(0);
    const log = fs.readFileSync(path.join(backup, "log-0000000001.tml"));
    expect(log[7]).toBe(2); // the record's compression byte: brotli
    expect(log.length).toBeLessThan(500);
  });
});

describe("client-side encryption", () => {
  it("stores nothing readable, restores with the key, and names the key id when it is missing", async () => {
    const dir = tmpDir();
    const key1 = writeKey(dir, "key1", 1);
    const backup = path.join(dir, "backup");
    const b = await fill(backup, { keyring: keyring({ id: 1, file: key1 }), compression: "gzip" }, 1, 20);
    await b.close();

    const stored = allBytes(backup);
    expect(stored.includes(Buffer.from("launch codes"))).toBe(false);
    expect(stored.includes(Buffer.from("CREATE TABLE"))).toBe(false);
    const ts = Buffer.alloc(8);
    ts.writeBigUInt64LE(1_234_567_890_123n);
    expect(stored.includes(ts)).toBe(false); // timestamps are sealed too

    const withKey = await openBackend(backup, { mode: "read", keyring: keyring({ id: 1, file: key1, decryptOnly: true }) });
    await restore(withKey, path.join(dir, "ok.db"));
    expect(rows(path.join(dir, "ok.db"))).toHaveLength(19);
    await withKey.close();

    const without = await openBackend(backup, { mode: "read" });
    const err = await codeOf(restore(without, path.join(dir, "nokey.db")));
    expect(err.code).toBe("E_KEY");
    expect(err.message).toMatch(/encrypted with key id 1, which was not given/);
    expect(err.hint).toMatch(/--decrypt-key 1=file:PATH/);
    expect(fs.existsSync(path.join(dir, "nokey.db"))).toBe(false);
    // Status needs no key: sizes and versions are all it shows of an encrypted backup.
    expect(await without.status()).toMatchObject({ version: 20, records: 20 });
    await without.close();
    // verify without the key names the key as the problem, not damage.
    const verify = await runCli(["verify", backup]);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toMatch(/^FAULT E_KEY: .* encrypted with key id 1, which was not given$/m);
    expect(verify.stderr).toMatch(/^Try: give every key the backup was written with/m);
    expect(verify.stderr).not.toMatch(/replica/);
  });

  it("a wrong key is a clear error, never garbage, and never writes", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    await (await fill(backup, { keyring: keyring({ id: 7, file: writeKey(dir, "right", 7) }) }, 1, 5)).close();
    const wrongKey = writeKey(dir, "wrong", 8);
    const log = path.join(backup, "log-0000000001.tml");
    const before = fs.readFileSync(log);

    // The backup knows the fingerprint of the key that wrote under id 7: a wrong one is refused
    // at open, by readers and (which matters more) by writers, before a byte is written with it.
    for (const mode of ["read", "write"] as const) {
      const err = await codeOf(openBackend(backup, { mode, keyring: keyring({ id: 7, file: wrongKey, decryptOnly: mode === "read" }) }));
      expect(err.code).toBe("E_KEY");
      expect(err.message).toMatch(/^key id 7 is not the key .* was written with under that id \(fingerprint [0-9a-f]{16}, the backup expects [0-9a-f]{16}\)$/);
    }
    const r = await runCli(["ingest", backup, "--key", `7=file:${wrongKey}`], { input: '{"version":6,"transaction":["SELECT 1"]}\n' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/key id 7 is not the key/);
    expect(r.stderr).not.toContain(fs.readFileSync(wrongKey, "utf8"));
    expect(fs.readFileSync(log).equals(before)).toBe(true);

    // Were the identity to lack the fingerprint, decryption itself still refuses: no garbage.
    const identity = JSON.parse(fs.readFileSync(path.join(backup, "tidemark.json"), "utf8"));
    delete identity.keys;
    delete identity.crc32;
    fs.writeFileSync(path.join(backup, "tidemark.json"), encodeDocument(identity));
    const wrong = await openBackend(backup, { mode: "read", keyring: keyring({ id: 7, file: wrongKey, decryptOnly: true }) });
    const err = await codeOf(restore(wrong, path.join(dir, "out.db")));
    expect(err.code).toBe("E_KEY");
    expect(err.message).toMatch(/key id 7 does not decrypt it .*the wrong key was given for that id/);
    expect(fs.existsSync(path.join(dir, "out.db"))).toBe(false);
    await wrong.close();
  });

  it("rotates keys: new writes use the new key, old records stay readable with the old one", async () => {
    const dir = tmpDir();
    const k1 = writeKey(dir, "k1", 1);
    const k2 = writeKey(dir, "k2", 2);
    const backup = path.join(dir, "backup");
    await (await fill(backup, { keyring: keyring({ id: 1, file: k1 }) }, 1, 10)).close();
    const rotated = await fill(backup, { keyring: keyring({ id: 2, file: k2 }, { id: 1, file: k1, decryptOnly: true }) }, 11, 20, "write");
    await restore(rotated, path.join(dir, "both.db"));
    expect(rows(path.join(dir, "both.db"))).toHaveLength(19);
    await rotated.close();

    const log = fs.readFileSync(path.join(backup, "log-0000000001.tml"));
    const keyIds = new Set<number>();
    for (let i = log.indexOf("TDMK"); i >= 0; i = log.indexOf("TDMK", i + 1)) keyIds.add(log.readUInt32LE(i + 16));
    expect([...keyIds].sort()).toEqual([1, 2]);

    const onlyNew = await openBackend(backup, { mode: "read", keyring: keyring({ id: 2, file: k2, decryptOnly: true }) });
    expect((await codeOf(restore(onlyNew, path.join(dir, "x.db")))).message).toMatch(/key id 1/);
    await onlyNew.close();
  });

  it("refuses to write in the clear into an encrypted backup", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "backup");
    await (await fill(backup, { keyring: keyring({ id: 1, file: writeKey(dir, "k", 1) }) }, 1, 3)).close();
    const before = fs.readFileSync(path.join(backup, "log-0000000001.tml"));
    const r = await runCli(["ingest", backup], { input: '{"version":4,"transaction":["SELECT 1"]}\n' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is encrypted: writing to it needs a key/);
    expect(r.stderr).toMatch(/Try: pass the current key with --key/);
    expect(fs.readFileSync(path.join(backup, "log-0000000001.tml")).equals(before)).toBe(true);
  });

  it("encrypts snapshots frame by frame, and a damaged frame is corruption, not a key error", async () => {
    const dir = tmpDir();
    const key = writeKey(dir, "k", 3);
    const host = path.join(dir, "host.db");
    const db = new Database(host);
    db.exec(`CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('${SECRET_ROW}')`);
    db.close();
    const backup = path.join(dir, "backup");
    const init = await runCli(["init", backup, "--from-db", host, "--version", "5", "--key", `9=file:${key}`, "--compression", "brotli"]);
    expect(init.code, init.stderr).toBe(0);
    const blob = fs.readdirSync(backup).find((n) => n.endsWith(".tms"))!;
    const bytes = fs.readFileSync(path.join(backup, blob));
    expect(bytes.includes(Buffer.from("SQLite format 3"))).toBe(false);
    expect(bytes.includes(Buffer.from("launch codes"))).toBe(false);

    const ok = await runCli(["restore", backup, path.join(dir, "out.db"), "--decrypt-key", `9=file:${key}`]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(rows(path.join(dir, "out.db"))).toEqual([SECRET_ROW]);
    const verify = await runCli(["verify", backup], { env: { TIDEMARK_DECRYPT_KEYS: `9=file:${key}` } });
    expect(verify.code, verify.stderr).toBe(0);

    bytes[40]! ^= 0xff; // inside the first frame
    fs.writeFileSync(path.join(backup, blob), bytes);
    const bad = await runCli(["restore", backup, path.join(dir, "bad.db"), "--decrypt-key", `9=file:${key}`]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(new RegExp(`${blob}, offset 24, version 5: snapshot frame checksum mismatch`));
  });

  it("a truncated encrypted record is a torn tail, dropped cleanly", async () => {
    const dir = tmpDir();
    const key = writeKey(dir, "k", 4);
    const backup = path.join(dir, "backup");
    await (await fill(backup, { keyring: keyring({ id: 1, file: key }) }, 1, 6)).close();
    const log = path.join(backup, "log-0000000001.tml");
    const bytes = fs.readFileSync(log);
    fs.writeFileSync(log, bytes.subarray(0, bytes.length - 10));
    const r = await runCli(["restore", backup, path.join(dir, "out.db"), "--json", "--decrypt-key", `1=file:${key}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).version).toBe(5);
    expect(r.stderr).toMatch(/torn record/);
  });

  it("rejects key sources that are not 32 bytes, and keys in the wrong form", async () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "short"), "abcd");
    const r = await runCli(["init", path.join(dir, "b"), "--key", `1=file:${path.join(dir, "short")}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is not 32 bytes/);
    expect(r.stderr).toMatch(/openssl rand -hex 32/);
    expect(r.stderr).not.toContain("abcd");
    const bad = await runCli(["init", path.join(dir, "c"), "--key", "deadbeef"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/expected ID=file:PATH or ID=env:NAME/);
  });
});
