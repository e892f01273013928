import { describe, expect, it } from "vitest";
import { changeFromWire, parseWireChange, statementsToWire } from "../../src/model/change-json.js";
import { InputError } from "../../src/util/errors.js";
import { Workload } from "../helpers/workload.js";

describe("JSON wire form", () => {
  it("parses blobs, bigints, named parameters and timestamps", () => {
    const c = parseWireChange(
      JSON.stringify({
        version: 3,
        timestamp: "2026-01-02T03:04:05Z",
        transaction: [
          "CREATE TABLE t (a, b)",
          { sql: "INSERT INTO t VALUES (?, ?)", params: [{ $blob: "AAH/" }, { $bigint: "-9223372036854775808" }] },
          { sql: "INSERT INTO t VALUES (@a, @b)", params: { a: 1.5, b: null } },
        ],
      }),
    );
    expect(c.version).toBe(3);
    expect(c.timestamp).toBe(Date.parse("2026-01-02T03:04:05Z"));
    expect(c.transaction![1]).toEqual({ sql: "INSERT INTO t VALUES (?, ?)", params: [Buffer.from([0, 1, 255]), -9223372036854775808n] });
    expect(c.transaction![2]).toEqual({ sql: "INSERT INTO t VALUES (@a, @b)", params: { a: 1.5, b: null } });
  });

  it("round-trips through statementsToWire", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const transaction = new Workload(seed).transaction(10);
      const back = parseWireChange(JSON.stringify({ version: 1, transaction: statementsToWire(transaction) }));
      expect(back.transaction).toEqual(transaction);
    }
  });

  const bad: [string, string, RegExp][] = [
    ["not JSON", "{version: 1", /invalid JSON/],
    ["not an object", "[1]", /change: expected a JSON object, got an array/],
    ["no version", '{"transaction":[]}', /change\.version: expected an integer >= 1/],
    ["version zero", '{"version":0,"transaction":[]}', /change\.version: expected an integer >= 1, got the number 0/],
    ["string version", '{"version":"7","transaction":[]}', /change\.version: .*got the string "7"/],
    ["fractional version", '{"version":1.5,"transaction":[]}', /change\.version/],
    ["unknown field", '{"version":1,"transactions":[]}', /change\.transactions: unknown field/],
    ["no transaction", '{"version":1}', /needs "transaction"/],
    ["transaction not array", '{"version":1,"transaction":"SELECT 1"}', /change\.transaction: expected an array/],
    ["statement not text", '{"version":1,"transaction":[42]}', /change\.transaction\[0\]: expected SQL text/],
    ["sql missing", '{"version":1,"transaction":[{"params":[]}]}', /change\.transaction\[0\]\.sql: expected SQL text/],
    ["bad param", '{"version":1,"transaction":[{"sql":"x","params":[true]}]}', /change\.transaction\[0\]\.params\[0\]: expected a number/],
    ["bad blob", '{"version":1,"transaction":[{"sql":"x","params":[{"$blob":"@@"}]}]}', /params\[0\]\.\$blob: expected standard base64/],
    ["bad bigint", '{"version":1,"transaction":[{"sql":"x","params":[{"$bigint":"1e3"}]}]}', /params\[0\]\.\$bigint: expected a decimal/],
    ["huge bigint", '{"version":1,"transaction":[{"sql":"x","params":[{"$bigint":"9223372036854775808"}]}]}', /does not fit/],
    ["bad name", '{"version":1,"transaction":[{"sql":"x","params":{"@a":1}}]}', /without its @/],
    ["bad timestamp", '{"version":1,"timestamp":"yesterday","transaction":[]}', /change\.timestamp/],
    ["snapshot_path over HTTP", '{"version":1,"snapshot_path":"/x"}', /change\.snapshot_path: unknown field/],
  ];
  for (const [name, text, message] of bad) {
    it(`rejects ${name} with a precise message`, () => {
      let err: unknown;
      try {
        parseWireChange(text);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InputError);
      expect((err as InputError).message).toMatch(message);
      expect((err as InputError).hint).toBeTruthy();
    });
  }

  it("accepts snapshot_path only where allowed", () => {
    expect(parseWireChange('{"version":4,"snapshot_path":"/tmp/x.db"}', { allowSnapshotPath: true })).toEqual({
      version: 4,
      snapshotPath: "/tmp/x.db",
    });
  });

  it("maps a wire change to a change, opening a snapshot_path only through the caller's opener", () => {
    const opened: string[] = [];
    const snapshot = (async function* () {})();
    const open = (file: string) => (opened.push(file), snapshot);
    expect(changeFromWire(parseWireChange('{"version":2,"timestamp":5,"transaction":["SELECT 1"]}'), open)).toEqual({
      version: 2,
      timestamp: 5,
      transaction: ["SELECT 1"],
    });
    expect(opened).toEqual([]);
    expect(changeFromWire(parseWireChange('{"version":4,"snapshot_path":"/tmp/x.db"}', { allowSnapshotPath: true }), open)).toEqual({
      version: 4,
      snapshot,
    });
    expect(opened).toEqual(["/tmp/x.db"]);
    expect(() => changeFromWire({ version: 4, snapshotPath: "/tmp/x.db" })).toThrow(/change\.snapshot_path: unknown field/);
  });

  it("carries continuation: true through to the change, and refuses a continuation that is not a boolean or carries a snapshot", () => {
    expect(changeFromWire(parseWireChange('{"version":3,"continuation":true,"transaction":["PRAGMA foreign_keys = ON;"]}'))).toEqual({
      version: 3,
      transaction: ["PRAGMA foreign_keys = ON;"],
      continuation: true,
    });
    expect(changeFromWire(parseWireChange('{"version":3,"continuation":false,"transaction":[]}'))).toEqual({ version: 3, transaction: [] });
    expect(() => parseWireChange('{"version":3,"continuation":"yes","transaction":[]}')).toThrow(/change\.continuation: expected true or false/);
    expect(() => parseWireChange('{"version":3,"continuation":true,"snapshot_path":"/x"}', { allowSnapshotPath: true })).toThrow(/change\.continuation: a continuation carries a transaction only/);
  });

  it("gives the caller's hint with invalid JSON", () => {
    expect(() => parseWireChange("{", { jsonHint: "send one" })).toThrow(expect.objectContaining({ hint: "send one" }));
  });
});
