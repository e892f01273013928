import { crc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import {
  RECORD_OVERHEAD,
  RecordType,
  decodeRecord,
  encodeChangeRecord,
  encodeRewindRecord,
  probeRecord,
} from "../../src/format/record-codec.js";
import type { Statement } from "../../src/model/change.js";
import { CorruptError, InputError } from "../../src/util/errors.js";
import { Rng, Workload } from "../helpers/workload.js";

function roundTrip(buf: Buffer) {
  const probe = probeRecord(buf, 0);
  if (probe.kind !== "ok") throw new Error(`probe: ${JSON.stringify(probe)}`);
  expect(probe.length).toBe(buf.length);
  return decodeRecord(buf, 0, probe, "test");
}

describe("change codec", () => {
  it("round-trips random transactions exactly, blobs binary and bigints whole", () => {
    for (let seed = 1; seed <= 40; seed++) {
      const w = new Workload(seed);
      const transaction = w.transaction(12);
      const buf = encodeChangeRecord({ version: seed, timestamp: 1_700_000_000_000 + seed, transaction });
      const rec = roundTrip(buf);
      expect(rec).toEqual({ type: RecordType.Change, version: seed, timestamp: 1_700_000_000_000 + seed, transaction });
    }
  });

  it("stores a blob as raw bytes, not base64", () => {
    const blob = Buffer.from("\x00\x01binary-marker\xff", "latin1");
    const buf = encodeChangeRecord({ version: 1, timestamp: 0, transaction: [{ sql: "x", params: [blob] }] });
    expect(buf.includes(blob)).toBe(true);
    expect(buf.length).toBeLessThan(RECORD_OVERHEAD + 64);
  });

  it("keeps a snapshot reference and a rewind record", () => {
    const snap = roundTrip(encodeChangeRecord({ version: 9, timestamp: 5, snapshot: { size: 2 ** 40, crc32: 0xdeadbeef, ref: "snap-x" } }));
    expect(snap.snapshot).toEqual({ size: 2 ** 40, crc32: 0xdeadbeef, ref: "snap-x" });
    expect(snap.transaction).toBeUndefined();
    const rw = roundTrip(encodeRewindRecord(2 ** 40, 7));
    expect(rw).toEqual({ type: RecordType.Rewind, version: 2 ** 40, timestamp: 7 });
  });

  it("finds any single flipped bit", () => {
    const rng = new Rng(3);
    const buf = encodeChangeRecord({ version: 3, timestamp: 1, transaction: new Workload(3).transaction(4) });
    for (let i = 0; i < 300; i++) {
      const copy = Buffer.from(buf);
      const at = rng.int(0, copy.length - 1);
      copy[at]! ^= 1 << rng.int(0, 7);
      expect(probeRecord(copy, 0).kind, `bit flip at ${at}`).not.toBe("ok");
    }
  });

  it("reports a short buffer as short, and garbage as bad", () => {
    const buf = encodeChangeRecord({ version: 1, timestamp: 1, transaction: ["SELECT 1"] });
    expect(probeRecord(buf.subarray(0, 10), 0).kind).toBe("short");
    expect(probeRecord(buf.subarray(0, buf.length - 1), 0).kind).toBe("short");
    expect(probeRecord(Buffer.from("garbage garbage garbage garbage garbage"), 0)).toMatchObject({ kind: "bad" });
  });

  it("a body that does not parse is corruption naming the location", () => {
    // A well-framed record whose body lies about a string length.
    const buf = encodeChangeRecord({ version: 4, timestamp: 1, transaction: ["SELECT 1"] });
    const bodyStart = 28;
    buf.writeUInt32LE(9999, bodyStart + 8 + 4 + 1); // the SQL length
    // Re-seal the checksum so only the body parse can catch it.
    buf.writeUInt32LE(crc32(buf.subarray(0, buf.length - 4)), buf.length - 4);
    const probe = probeRecord(buf, 0);
    expect(probe.kind).toBe("ok");
    if (probe.kind !== "ok") return;
    expect(() => decodeRecord(buf, 0, probe, "log-x")).toThrow(CorruptError);
    expect(() => decodeRecord(buf, 0, probe, "log-x")).toThrow(/log-x, offset 0, version 4/);
  });

  it("refuses what it cannot store", () => {
    expect(() => encodeChangeRecord({ version: 0, timestamp: 0 })).toThrow(InputError);
    expect(() => encodeChangeRecord({ version: 1.5, timestamp: 0 })).toThrow(InputError);
    const tooBig: Statement = { sql: "x", params: [2n ** 63n] };
    expect(() => encodeChangeRecord({ version: 1, timestamp: 0, transaction: [tooBig] })).toThrow(/64-bit/);
    const wrong = { sql: "x", params: [{}] } as unknown as Statement;
    expect(() => encodeChangeRecord({ version: 1, timestamp: 0, transaction: [wrong] })).toThrow(/transaction\[0\]\.params\[0\]/);
  });
});
