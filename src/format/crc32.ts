/**
 * CRC-32 (the zlib polynomial) over a byte range without slicing the buffer.
 *
 * Large ranges (snapshot frames of 1 MiB, big records) go to native code: @node-rs/crc32
 * (carry-less multiplication where the CPU has it: a third of zlib.crc32's CPU here), loaded
 * on the first large range so that commands which never checksum much never load it, and
 * zlib.crc32 where that package has no binary for the platform. Each call costs a native hop
 * and a subarray; records are mostly small, so ranges under SMALL bytes use a slicing-by-8
 * table here. All give identical values (a test checks it).
 */
import { createRequire } from "node:module";
import { crc32 as zlibCrc32 } from "node:zlib";

const SMALL = 512;

type NativeCrc = (buf: Uint8Array, seed: number) => number;
let native: NativeCrc | undefined;

/** The native CRC for large ranges: @node-rs/crc32's, else zlib's. */
function nativeCrc(): NativeCrc {
  if (!native) {
    try {
      const { crc32: fast } = createRequire(import.meta.url)("@node-rs/crc32") as { crc32: (buf: Uint8Array, seed?: number) => number };
      native = (buf, seed) => fast(buf, seed);
    } catch {
      native = (buf, seed) => zlibCrc32(buf, seed);
    }
  }
  return native;
}
const TABLE = new Int32Array(256 * 8);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  TABLE[n] = c;
}
for (let n = 0; n < 256; n++) {
  let c = TABLE[n]!;
  for (let k = 1; k < 8; k++) {
    c = TABLE[c & 0xff]! ^ (c >>> 8);
    TABLE[k * 256 + n] = c;
  }
}

/** CRC-32 of `buf[start..end)`, continuing from `seed` (0 to start afresh). */
export function crc32(buf: Uint8Array, start = 0, end = buf.length, seed = 0): number {
  if (end - start >= SMALL) return nativeCrc()(buf.subarray(start, end), seed);
  const t = TABLE;
  let c = ~seed;
  let i = start;
  for (; i + 8 <= end; i += 8) {
    c ^= buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24);
    const h = buf[i + 4]! | (buf[i + 5]! << 8) | (buf[i + 6]! << 16) | (buf[i + 7]! << 24);
    c =
      t[1792 + (c & 0xff)]! ^
      t[1536 + ((c >>> 8) & 0xff)]! ^
      t[1280 + ((c >>> 16) & 0xff)]! ^
      t[1024 + (c >>> 24)]! ^
      t[768 + (h & 0xff)]! ^
      t[512 + ((h >>> 8) & 0xff)]! ^
      t[256 + ((h >>> 16) & 0xff)]! ^
      t[h >>> 24]!;
  }
  for (; i < end; i++) c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** The reflected CRC-32 polynomial. */
const POLY = 0xedb88320;

/** a × b modulo the CRC polynomial, both as reflected 32-bit polynomials. */
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) modulo the polynomial, for k = 0..31. */
const X2N = new Uint32Array(32);
X2N[0] = 1 << 30; // x^1
for (let k = 1; k < 32; k++) X2N[k] = multModP(X2N[k - 1]!, X2N[k - 1]!);

/**
 * CRC-32 of the concatenation A‖B from `crcA`, `crcB` and B's length, without reading the
 * bytes again (zlib's crc32_combine): a frame's checksum extends a running one.
 */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  // x^(8·lengthB): one factor of x^(2^k) per set bit of the bit count.
  let x = 0x80000000; // x^0
  for (let n = lengthB, k = 3; n > 0; n >>>= 1, k++) if (n & 1) x = multModP(X2N[k & 31]!, x);
  return (multModP(x, crcA) ^ crcB) >>> 0;
}
