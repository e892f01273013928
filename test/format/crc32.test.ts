import { crc32 as zlibCrc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import { crc32 } from "../../src/format/crc32.js";
import { Rng } from "../helpers/workload.js";

describe("crc32", () => {
  it("matches zlib for every length around the table and native paths, at any offset", () => {
    const rng = new Rng(11);
    const buf = rng.bytes(4096);
    for (const len of [0, 1, 7, 8, 9, 63, 64, 100, 511, 512, 513, 2000]) {
      for (const start of [0, 1, 3, 17]) {
        expect(crc32(buf, start, start + len), `len ${len} at ${start}`).toBe(zlibCrc32(buf.subarray(start, start + len)));
      }
    }
  });

  it("continues from a seed like zlib does", () => {
    const buf = new Rng(12).bytes(1000);
    const first = crc32(buf, 0, 300);
    expect(crc32(buf, 300, 1000, first)).toBe(zlibCrc32(buf));
    expect(crc32(buf, 300, 350, first)).toBe(zlibCrc32(buf.subarray(0, 350)));
  });
});
