import { describe, expect, it } from "vitest";
import { RecordReader, type ReadStep } from "../../src/backup/log-reader.js";
import type { LogChunk } from "../../src/backup/storage.js";
import { decodeRecord, encodeChangeRecord } from "../../src/format/record-codec.js";

/** One segment's bytes as a backend yields them: chunks of the given sizes, in turn. */
async function* chunked(log: Buffer, sizes: readonly number[]): AsyncGenerator<LogChunk> {
  for (let at = 0, i = 0; at < log.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, log.length - at);
    yield { segment: "log", offset: at, segmentStart: 0, bytes: log.subarray(at, at + n), segmentEnd: at + n === log.length };
    at += n;
  }
}

/** Every step of a reader, records decoded (their bytes may be reused windows). */
async function steps(chunks: AsyncIterable<LogChunk>): Promise<unknown[]> {
  const reader = new RecordReader(chunks, 0);
  const out: unknown[] = [];
  for (;;) {
    let step: ReadStep | null | Promise<ReadStep | null> = reader.next();
    if (step instanceof Promise) step = await step;
    if (step === null) break;
    if (step.kind !== "record") {
      out.push({ ...step });
      break;
    }
    const rec = decodeRecord(step.buf, step.at, step.header, step.segment);
    out.push({ offset: step.offset, segmentOffset: step.segmentOffset, version: rec.version, transaction: rec.transaction });
  }
  return out;
}

describe("RecordReader", () => {
  const records = Array.from({ length: 40 }, (_, i) =>
    encodeChangeRecord({ version: i + 1, timestamp: 1000 + i, transaction: [`INSERT INTO t VALUES (${i}, '${"x".repeat(i * 7)}')`] }),
  );
  const log = Buffer.concat(records);

  it("frames the same records however the chunks cut them (a record straddling two chunks, or many)", async () => {
    const whole = await steps(chunked(log, [log.length]));
    expect(whole).toHaveLength(records.length);
    // A cut inside a record's header, and inside its body, with the segment's end in the next chunk.
    const at20 = Buffer.concat(records.slice(0, 20)).length;
    for (const sizes of [[1], [7], [29], [28, 1], [100, 3, 250], [log.length - 1], [at20 + 10, log.length], [at20 + 40, log.length]]) {
      expect(await steps(chunked(log, sizes)), `chunks of ${sizes.join(",")}`).toEqual(whole);
    }
  });

  it("tells a torn tail the same way after a straddling record", async () => {
    const torn = log.subarray(0, log.length - 5);
    const whole = await steps(chunked(torn, [torn.length]));
    expect(whole.at(-1)).toMatchObject({ kind: "short", last: true });
    for (const sizes of [[1], [13], [64, 5]]) expect(await steps(chunked(torn, sizes)), `chunks of ${sizes.join(",")}`).toEqual(whole);
  });
});
