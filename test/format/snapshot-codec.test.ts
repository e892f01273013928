import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { Keyring } from "../../src/format/keyring.js";
import { makeCodec, type Codec } from "../../src/format/sealing.js";
import { FRAME_SIZE, SnapshotEncoder, decodeSnapshot, type PositionedReader, type SnapshotDigest } from "../../src/format/snapshot-codec.js";
import { CorruptError } from "../../src/util/errors.js";
import { Rng } from "../helpers/workload.js";
import { tmpDir } from "../helpers/tmp.js";

const KEYS = Keyring.load([{ id: 4, source: "env:K" }], "keys", { K: "b".repeat(64) });

/** Encodes `raw` into a blob file; returns its path and digest. */
async function blobOf(raw: Buffer, codec: Codec): Promise<{ file: string; digest: SnapshotDigest }> {
  const file = path.join(tmpDir(), "snap.tms");
  const encoder = new SnapshotEncoder(codec);
  // Odd-sized pieces, so that frames are cut from several of them.
  async function* pieces() {
    for (let at = 0; at < raw.length; at += 300_001) yield raw.subarray(at, at + 300_001);
  }
  const parts: Buffer[] = [];
  for await (const b of encoder.frames(pieces())) parts.push(Buffer.from(b));
  fs.writeFileSync(file, Buffer.concat(parts));
  return { file, digest: encoder.digest };
}

/** A real file opened for positioned reads, as the file backend's readBlob gives one. */
async function positioned(file: string): Promise<PositionedReader & { closed: () => boolean }> {
  const fh = await fsp.open(file, "r");
  let closed = false;
  return {
    read: async (into, length, position) => (await fh.read(into, 0, length, position)).bytesRead,
    close: async () => {
      closed = true;
      await fh.close();
    },
    closed: () => closed,
  };
}

/** Streams a file in reads of 1 MiB, as the file backend's openBlob does. */
function streamed(file: string): AsyncIterable<Buffer> {
  return fs.createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>;
}

/** Decodes, copying each buffer at once (a reused one is overwritten by the next). */
async function decodeAll(source: Parameters<typeof decodeSnapshot>[0], digest: SnapshotDigest, reuse: boolean): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const b of decodeSnapshot(source, digest, "test blob", 7, KEYS, { reuse })) out.push(Buffer.from(b));
  return Buffer.concat(out);
}

const CODECS: [string, Codec][] = [
  ["plain", makeCodec()],
  ["gzip", makeCodec({ compression: "gzip" })],
  ["AES-256-GCM", makeCodec({ keyring: KEYS })],
];

describe("snapshot codec: positioned reads and a reused buffer", () => {
  for (const [name, codec] of CODECS) {
    it(`${name}: every way of reading gives back the bytes, frame boundaries straddling reads`, async () => {
      const raw = new Rng(3).bytes(2 * FRAME_SIZE + 12_345);
      const { file, digest } = await blobOf(raw, codec);
      expect(digest.size).toBe(raw.length);
      for (const reuse of [false, true]) {
        expect((await decodeAll(streamed(file), digest, reuse)).equals(raw), `stream, reuse ${reuse}`).toBe(true);
        const reader = await positioned(file);
        expect((await decodeAll(reader, digest, reuse)).equals(raw), `positioned, reuse ${reuse}`).toBe(true);
        expect(reader.closed()).toBe(true);
      }
    });
  }

  it("a flipped byte in a plain frame is the same CorruptError, at the same offset, whichever way it is read", async () => {
    const raw = new Rng(4).bytes(3 * FRAME_SIZE);
    const { file, digest } = await blobOf(raw, makeCodec());
    const bytes = fs.readFileSync(file);
    const frame2 = 24 + (8 + FRAME_SIZE); // header, then frame 0
    bytes[frame2 + 8 + 1000]! ^= 0x40;
    fs.writeFileSync(file, bytes);
    const errors: unknown[] = [];
    for (const reuse of [false, true]) {
      errors.push(await decodeAll(streamed(file), digest, reuse).catch((e: unknown) => e));
      errors.push(await decodeAll(await positioned(file), digest, reuse).catch((e: unknown) => e));
    }
    for (const err of errors) {
      expect(err).toBeInstanceOf(CorruptError);
      expect((err as Error).message).toBe((errors[0] as Error).message);
      expect((err as Error).message).toContain(`offset ${frame2}`);
      expect((err as Error).message).toContain("snapshot frame checksum mismatch");
    }
  });

  it("a plain blob whose frames are intact but hold other bytes than its record expects is refused", async () => {
    const raw = new Rng(5).bytes(FRAME_SIZE + 10);
    const { file, digest } = await blobOf(raw, makeCodec());
    const wrong = { size: digest.size, crc32: (digest.crc32 ^ 1) >>> 0 };
    await expect(decodeAll(await positioned(file), wrong, true)).rejects.toThrow(/its record expects/);
  });
});
