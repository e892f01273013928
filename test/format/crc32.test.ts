import { crc32 as zlibCrc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import { crc32, crc32Combine } from "../../src/format/crc32.js";
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

  it("matches zlib over a snapshot frame's size, continuing from a seed (the native path's real use)", () => {
    const buf = new Rng(13).bytes((1 << 20) + 777);
    const head = crc32(buf, 0, 777);
    expect(crc32(buf, 777, buf.length, head)).toBe(zlibCrc32(buf));
    expect(crc32(buf, 5, buf.length - 3)).toBe(zlibCrc32(buf.subarray(5, buf.length - 3)));
  });

  it("continues from a seed like zlib does", () => {
    const buf = new Rng(12).bytes(1000);
    const first = crc32(buf, 0, 300);
    expect(crc32(buf, 300, 1000, first)).toBe(zlibCrc32(buf));
    expect(crc32(buf, 300, 350, first)).toBe(zlibCrc32(buf.subarray(0, 350)));
  });

  it("combines the CRC of two pieces into the CRC of both, as zlib's crc32_combine", () => {
    const buf = new Rng(13).bytes((1 << 20) + 40);
    for (const [a, b] of [[0, 0], [0, 5], [5, 0], [1, 1], [300, 1000], [8, 1 << 20], [(1 << 20) + 3, 37]] as const) {
      const crcA = zlibCrc32(buf.subarray(0, a));
      const crcB = zlibCrc32(buf.subarray(a, a + b));
      expect(crc32Combine(crcA, crcB, b), `${a} + ${b}`).toBe(zlibCrc32(buf.subarray(0, a + b)));
    }
  });
});
