import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";
import { buildDbak, type DbakRecordSpec } from "../fixtures/cln/dbak-writer.js";

const FIXTURE = path.join(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/cln/pre-4090-backup.dbak");

/** Versions 1..n of a small table, each a function of its version and tag. */
function history(n: number, tag = "v"): DbakRecordSpec[] {
  const records: DbakRecordSpec[] = [{ version: 1, transaction: ["CREATE TABLE t (v INTEGER, tag TEXT)"] }];
  for (let v = 2; v <= n; v++) records.push({ version: v, transaction: [`INSERT INTO t VALUES (${v}, '${tag}${v}')`] });
  return records;
}

function write(dir: string, bytes: Buffer, name = "backup.dbak"): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, bytes);
  return file;
}

async function importAndRestore(file: string, dir: string, rules = "core-lightning"): Promise<{ stdout: string; restored: string }> {
  const backup = path.join(dir, "tidemark");
  const imported = await runCli(["cln", "import", file, backup]);
  expect(imported.code, imported.stderr).toBe(0);
  const restored = path.join(dir, "restored.sqlite3");
  const r = await runCli(["restore", backup, restored, "--rules", rules]);
  expect(r.code, r.stderr).toBe(0);
  return { stdout: imported.stdout, restored };
}

function query<T>(file: string, sql: string): T[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).all() as T[];
  } finally {
    db.close();
  }
}

describe("cln import: the real pre-4090 backup", () => {
  it("imports the backup written by the Python plugin; the core-lightning rules restore it to data_version 46", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "tidemark");
    const imported = await runCli(["cln", "import", FIXTURE, backup, "--json"]);
    expect(imported.code, imported.stderr).toBe(0);
    expect(JSON.parse(imported.stdout)).toMatchObject({ changes: 46, firstVersion: 1, headVersion: 46, supersededVersions: [] });

    const restored = path.join(dir, "node.sqlite3");
    const r = await runCli(["restore", backup, restored, "--rules", "core-lightning", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as { version: number; rewrites: Record<string, number> };
    expect(result.version).toBe(46);
    expect(Object.values(result.rewrites).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(query(restored, "PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }]);
    expect(query(restored, "SELECT intval FROM vars WHERE name = 'data_version'")).toEqual([{ intval: 46 }]);
  });

  it("without the rules the pre-4090 statements fail, naming the version", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "tidemark");
    expect((await runCli(["cln", "import", FIXTURE, backup])).code).toBe(0);
    const r = await runCli(["restore", backup, path.join(dir, "node.sqlite3")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/version 11.*reserved_til=174WHERE/);
  });
});

const FRESH_NODE = path.join(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/core-lightning/fresh-node-v26.06.6.dbak");

/**
 * The Python plugin's own restore (`backup-cli restore`, FileBackend.stream_changes), as the
 * reference: every record from offset 512 in file order, until the first one whose version
 * reaches the header's, each statement executed on a connection with foreign keys on.
 */
function pythonRestore(file: string, dest: string): void {
  const bytes = fs.readFileSync(file);
  const head = bytes.readUInt32BE(4);
  const db = new Database(dest);
  db.pragma("foreign_keys = 1");
  try {
    let version = -1;
    for (let at = 512; version < head; ) {
      const length = bytes.readUInt32BE(at);
      version = bytes.readUInt32BE(at + 4);
      expect(bytes[at + 8]).toBe(1); // the fixture holds transactions only
      for (const st of bytes.subarray(at + 9, at + 9 + length).toString("utf8").split("\0")) db.exec(st);
      at += 9 + length;
    }
  } finally {
    db.close();
  }
}

describe("cln import: the .dbak of a brand-new node under the real lightningd v26.06.6", () => {
  it("keeps the repeated versions as continuations and restores what the Python plugin's restore restores, row for row", async () => {
    const dir = tmpDir();
    const backup = path.join(dir, "tidemark");
    const imported = await runCli(["cln", "import", FRESH_NODE, backup, "--json"]);
    expect(imported.code, imported.stderr).toBe(0);
    expect(JSON.parse(imported.stdout)).toMatchObject({ changes: 33, continuations: 2, firstVersion: 1, headVersion: 31, supersededVersions: [] });

    const restored = path.join(dir, "restored.sqlite3");
    const r = await runCli(["restore", backup, restored, "--rules", "core-lightning"]);
    expect(r.code, r.stderr).toBe(0);
    const reference = path.join(dir, "python-restore.sqlite3");
    pythonRestore(FRESH_NODE, reference);
    expectSameDb(restored, reference);
    expect(query(restored, "SELECT count(*) AS n FROM sqlite_master")).toEqual([{ n: 71 }]);
    expect(query(restored, "SELECT intval FROM vars WHERE name = 'data_version'")).toEqual([{ intval: 31 }]);
  });
});

describe("cln import: generated files", () => {
  it("leaves out a rewound record: the original's replacement came after it, and its header does not count it", async () => {
    const dir = tmpDir();
    // The original's rewind bug: 5, then its replacement 5 written after it, then 6. The two
    // records of 5 are the same size, and neither bumps lightningd's data_version: the header's
    // byte count alone says which one is gone.
    const records = [
      ...history(4),
      { version: 5, transaction: ["INSERT INTO t VALUES (5, 'rolled back')"], dropped: true },
      { version: 5, transaction: ["INSERT INTO t VALUES (5, 'replacement!')"] },
      { version: 6, transaction: ["INSERT INTO t VALUES (6, 'v6')"] },
    ];
    const { stdout, restored } = await importAndRestore(write(dir, buildDbak(records).bytes), dir);
    expect(stdout).toMatch(/imported 6 changes \(0 snapshots, 0 continuations, .*versions 1\.\.6/);
    expect(stdout).toMatch(/left out 1 rewound record\(s\).*versions 5/);
    expect(query(restored, "SELECT v, tag FROM t ORDER BY v")).toEqual([
      { v: 2, tag: "v2" },
      { v: 3, tag: "v3" },
      { v: 4, tag: "v4" },
      { v: 5, tag: "replacement!" },
      { v: 6, tag: "v6" },
    ]);
  });

  it("keeps continuations and leaves out a rewind in the same file: a redo carries lightningd's data_version bump again", async () => {
    const dir = tmpDir();
    const bump = (v: number) => `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`;
    const records: DbakRecordSpec[] = [
      { version: 1, transaction: ["CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER)", "INSERT INTO vars VALUES ('data_version', 0)", "CREATE TABLE t (v INTEGER, tag TEXT)", bump(1)] },
      { version: 1, transaction: ["PRAGMA foreign_keys = OFF;"] },
      { version: 2, transaction: ["INSERT INTO t VALUES (2, 'rebuilt')", bump(2)] },
      { version: 2, transaction: ["PRAGMA foreign_keys = ON;"] },
      { version: 3, transaction: ["INSERT INTO t VALUES (3, 'rolled back')", bump(3)], dropped: true },
      // The same size as the rolled-back record: only its data_version bump tells them apart.
      { version: 3, transaction: ["INSERT INTO t VALUES (3, 'redone back')", bump(3)] },
      { version: 3, transaction: ["INSERT INTO t VALUES (3, 'continued')"] },
      { version: 4, transaction: ["INSERT INTO t VALUES (4, 'v4')", bump(4)] },
    ];
    const { stdout, restored } = await importAndRestore(write(dir, buildDbak(records).bytes), dir);
    expect(stdout).toMatch(/imported 7 changes \(0 snapshots, 3 continuations, /);
    expect(stdout).toMatch(/left out 1 rewound record\(s\).*versions 3/);
    expect(query(restored, "SELECT v, tag FROM t ORDER BY rowid")).toEqual([
      { v: 2, tag: "rebuilt" },
      { v: 3, tag: "redone back" },
      { v: 3, tag: "continued" },
      { v: 4, tag: "v4" },
    ]);
    expect(query(restored, "SELECT intval FROM vars")).toEqual([{ intval: 4 }]);
  });

  it("refuses a file whose header counts bytes that no set of repeated records adds up to, and creates nothing", async () => {
    const dir = tmpDir();
    const { bytes } = buildDbak([...history(3), { version: 3, transaction: ["INSERT INTO t VALUES (3, 'again')"] }, { version: 4, transaction: ["SELECT 1"] }]);
    bytes.writeBigUInt64BE(bytes.readBigUInt64BE(8) - 5n, 8); // 5 bytes: no record is that small
    const file = write(dir, bytes);
    const backup = path.join(dir, "tidemark");
    const r = await runCli(["cln", "import", file, backup]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the header says 5 bytes of records were rewound, but no set of the records of repeated versions \(3\) adds up to that/);
    expect(r.stderr).toMatch(/Try: restore this file with the Python plugin's backup-cli restore/);
    expect(fs.existsSync(backup)).toBe(false);
  });

  it("imports a snapshot record as a new base, streamed, then the transactions after it", async () => {
    const dir = tmpDir();
    const source = path.join(dir, "source.sqlite3");
    const db = new Database(source);
    db.exec("CREATE TABLE t (v INTEGER, tag TEXT); CREATE TABLE big (b BLOB)");
    // A few MiB, so the snapshot crosses the importer's 1 MiB chunks.
    const insert = db.prepare("INSERT INTO big VALUES (randomblob(65536))");
    for (let i = 0; i < 48; i++) insert.run();
    db.close();
    const snapshot = fs.readFileSync(source);
    expect(snapshot.length).toBeGreaterThan(3 << 20);
    const records: DbakRecordSpec[] = [
      { version: 10, snapshot },
      { version: 11, transaction: ["INSERT INTO t VALUES (11, 'a')", "INSERT INTO t VALUES (11, 'b')"] },
      { version: 12, transaction: ["DELETE FROM big WHERE rowid > 40"] },
    ];
    const { stdout, restored } = await importAndRestore(write(dir, buildDbak(records).bytes), dir);
    expect(stdout).toMatch(/imported 3 changes \(1 snapshots, 0 continuations, 3 statements\), versions 10\.\.12/);
    const expected = new Database(source);
    expected.exec("INSERT INTO t VALUES (11, 'a'); INSERT INTO t VALUES (11, 'b'); DELETE FROM big WHERE rowid > 40");
    expected.close();
    expect(query(restored, "SELECT * FROM t ORDER BY rowid")).toEqual(query(source, "SELECT * FROM t ORDER BY rowid"));
    // Compared with Buffer.equals: a deep toEqual of megabytes of blobs takes seconds.
    const blobs = (file: string) => query<{ b: Buffer }>(file, "SELECT b FROM big ORDER BY rowid").map((r) => r.b);
    const [got, want] = [blobs(restored), blobs(source)];
    expect(got.length).toBe(40);
    expect(got.every((b, i) => b.equals(want[i]!))).toBe(true);
  });

  it("refuses a file truncated mid-record, naming the offset, and creates nothing", async () => {
    const dir = tmpDir();
    const { bytes, offsets } = buildDbak(history(6));
    const cut = offsets[3]! + 12; // inside record 4's payload
    const file = write(dir, bytes.subarray(0, cut));
    const backup = path.join(dir, "tidemark");
    const r = await runCli(["cln", "import", file, backup]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`Error: ${file}, offset ${offsets[3]}, version 4: truncated record: the record holds`);
    expect(r.stderr).toMatch(/head version is 6 but the file holds whole records only up to version 3/);
    expect(r.stderr).toMatch(/Try: .*Nothing was imported/);
    expect(fs.existsSync(backup)).toBe(false);
  });

  it("leaves out a record cut short after the head: a write interrupted by a crash, never acknowledged", async () => {
    const dir = tmpDir();
    const { bytes } = buildDbak(history(6), { head: 5 });
    const sixth = buildDbak(history(6)).offsets[5]!;
    const file = write(dir, bytes.subarray(0, sixth + 5));
    const { stdout, restored } = await importAndRestore(file, dir);
    expect(stdout).toMatch(/versions 1\.\.5/);
    expect(stdout).toContain(`left out 5 bytes at offset ${sixth}: a record cut short after the head`);
    expect(query(restored, "SELECT max(v) AS v FROM t")).toEqual([{ v: 5 }]);
  });

  it("leaves out whole records written after the head, which the header never acknowledged", async () => {
    const dir = tmpDir();
    const { stdout, restored } = await importAndRestore(write(dir, buildDbak(history(7), { head: 5 }).bytes), dir);
    expect(stdout).toMatch(/left out record\(s\) written after the head and never acknowledged: versions 6, 7/);
    expect(query(restored, "SELECT max(v) AS v FROM t")).toEqual([{ v: 5 }]);
  });

  it.each([
    ["a header shorter than 512 bytes", () => ({ bytes: Buffer.alloc(100), offset: 0 }), /shorter than the 512-byte \.dbak header/],
    ["an unknown format version", () => ({ bytes: buildDbak(history(2), { formatVersion: 2 }).bytes, offset: 0 }), /file format version 2, expected 1/],
    [
      "an unknown record type",
      () => {
        const b = buildDbak([...history(2), { version: 3, transaction: ["SELECT 1"], type: 7 }]);
        return { bytes: b.bytes, offset: b.offsets[2]! };
      },
      /version 3: unknown record type 7/,
    ],
    [
      "a version that goes backwards",
      () => {
        const b = buildDbak([...history(4), { version: 2, transaction: ["SELECT 1"] }]);
        return { bytes: b.bytes, offset: b.offsets[4]! };
      },
      /version 2: version 2 after version 4/,
    ],
    [
      "a transaction that skips a version",
      () => {
        const b = buildDbak([...history(3), { version: 5, transaction: ["SELECT 1"] }]);
        return { bytes: b.bytes, offset: b.offsets[3]! };
      },
      /version 5 after version 3/,
    ],
    [
      "a first record that is a transaction after version 1",
      () => ({ bytes: buildDbak([{ version: 3, transaction: ["SELECT 1"] }]).bytes, offset: 512 }),
      /the first record is a transaction at version 3/,
    ],
    [
      "a snapshot that is not a SQLite file",
      () => ({ bytes: buildDbak([{ version: 3, snapshot: Buffer.from("definitely not sqlite") }]).bytes, offset: 512 }),
      /the snapshot record is not a SQLite database/,
    ],
    [
      "a transaction that is not UTF-8",
      () => {
        const b = buildDbak([...history(2), { version: 3, snapshot: Buffer.from([0xff, 0xfe, 0x41]), type: 1 }]);
        return { bytes: b.bytes, offset: b.offsets[2]! };
      },
      /the transaction is not valid UTF-8/,
    ],
    [
      "records that end before the header's head",
      () => {
        const b = buildDbak(history(3), { head: 9 });
        return { bytes: b.bytes, offset: b.bytes.length };
      },
      /the records end at version 3, but the header's head version is 9/,
    ],
  ])("refuses %s with E_CORRUPT and the byte offset", async (_name, make, message) => {
    const dir = tmpDir();
    const { bytes, offset } = make();
    const file = write(dir, bytes);
    const backup = path.join(dir, "tidemark");
    const r = await runCli(["cln", "import", file, backup]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`Error: ${file}, offset ${offset}`);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/\nTry: /);
    expect(fs.existsSync(backup)).toBe(false);
  });

  it("refuses a missing file and an existing backup", async () => {
    const dir = tmpDir();
    const missing = await runCli(["cln", "import", path.join(dir, "nope.dbak"), path.join(dir, "b")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/cannot open .*nope\.dbak: ENOENT/);

    const file = write(dir, buildDbak(history(3)).bytes);
    expect((await runCli(["cln", "import", file, path.join(dir, "b")])).code).toBe(0);
    const again = await runCli(["cln", "import", file, path.join(dir, "b")]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/a backup already exists/);
  });
});

describe("cln import --lightning-dir: the migration", () => {
  it("points backup.lock from the .dbak to the new backup and checks the node's data_version", async () => {
    const root = tmpDir();
    const dir = path.join(root, "bitcoin");
    fs.mkdirSync(dir);
    const file = write(root, fs.readFileSync(FIXTURE));
    fs.writeFileSync(path.join(dir, "backup.lock"), JSON.stringify({ backend_url: `file://${file}` }));
    const node = new Database(path.join(dir, "lightningd.sqlite3"));
    node.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER); INSERT INTO vars VALUES ('data_version', 46)");
    node.close();

    const backup = path.join(root, "tidemark");
    const r = await runCli(["cln", "import", file, backup, "--lightning-dir", dir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`wrote ${path.join(dir, "backup.lock")}`);
    expect(r.stdout).toContain("lightningd.sqlite3 is at data_version 46, the backup's head: in sync");
    expect(JSON.parse(fs.readFileSync(path.join(dir, "backup.lock"), "utf8"))).toEqual({ backend_url: backup });
    expect(r.stderr).toBe("");
  });

  it("warns when the node database does not match the imported head", async () => {
    const root = tmpDir();
    const file = write(root, buildDbak(history(5)).bytes);
    const node = new Database(path.join(root, "lightningd.sqlite3"));
    node.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER); INSERT INTO vars VALUES ('data_version', 9)");
    node.close();
    const r = await runCli(["cln", "import", file, path.join(root, "tidemark"), "--lightning-dir", root]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: lightningd.sqlite3 is at data_version 9 but the imported backup ends at version 5/);
  });

  it("refuses, before importing, to replace a backup.lock that names something else, unless --force", async () => {
    const root = tmpDir();
    const file = write(root, buildDbak(history(3)).bytes);
    fs.writeFileSync(path.join(root, "backup.lock"), JSON.stringify({ backend_url: "/somewhere/else" }));
    const backup = path.join(root, "tidemark");
    const r = await runCli(["cln", "import", file, backup, "--lightning-dir", root]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/backup\.lock names \/somewhere\/else, not .*backup\.dbak/);
    expect(r.stderr).toMatch(/Try: add --force/);
    expect(fs.existsSync(backup)).toBe(false);

    const forced = await runCli(["cln", "import", file, backup, "--lightning-dir", root, "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(root, "backup.lock"), "utf8"))).toEqual({ backend_url: backup });
  });
});
