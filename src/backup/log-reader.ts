/**
 * Reads a generation's record log from a backend's chunks: frames records, tells a torn tail
 * from damage, and yields the records in order.
 *
 * The same reader serves every backend: a backend yields bytes (a file in large reads, an
 * object per append), and records are framed here. It answers from the current window
 * without a promise per record, which is most of the cost of reading a long log.
 */
import { RECORD_HEADER_SIZE, RECORD_MAGIC, probeRecord, type RecordHeader } from "../format/record-codec.js";
import type { LogChunk } from "./storage.js";

/** One step of a {@link RecordReader}. */
export type ReadStep =
  /** An intact record: `buf[at..at+header.length)`, at log offset `offset`. */
  | { readonly kind: "record"; readonly offset: number; readonly header: RecordHeader; readonly buf: Buffer; readonly at: number; readonly segment: string; readonly segmentOffset: number }
  /** Bytes at `offset` that are not an intact record. */
  | {
      readonly kind: "bad";
      readonly offset: number;
      readonly segment: string;
      readonly segmentOffset: number;
      readonly what: string;
      readonly version?: number;
      /** The record's length, when its header is intact. */
      readonly length?: number;
    }
  /**
   * A record at `offset` that runs past the end of its segment; `last` when nothing follows
   * it in the log (the tail an interrupted append leaves).
   */
  | {
      readonly kind: "short";
      readonly offset: number;
      readonly segment: string;
      readonly segmentOffset: number;
      readonly last: boolean;
      /** The bytes the record needs: its length when its header is intact, else a header's. */
      readonly needed: number;
    };

/**
 * Reads records from a log's chunks, starting at the offset the chunks start at. Records
 * never straddle two segments; within one, a record may straddle two chunks.
 */
export class RecordReader {
  readonly #it: AsyncIterator<LogChunk>;
  #win: Buffer = Buffer.alloc(0);
  #winStart: number;
  #segment = "";
  /** Log offset where the current segment starts. */
  #segmentStart = 0;
  /** Whether the window ends where its segment ends. */
  #segmentEnd = true;
  #eof = false;
  #offset: number;
  /** The rest of a chunk whose first bytes ended a record that straddled two chunks. */
  #rest: LogChunk | undefined;

  constructor(chunks: AsyncIterable<LogChunk>, start: number) {
    this.#it = chunks[Symbol.asyncIterator]();
    this.#winStart = start;
    this.#offset = start;
  }

  /** Offset just past the last intact record returned. */
  get end(): number {
    return this.#offset;
  }

  /** Stops reading; releases the backend's stream. */
  async close(): Promise<void> {
    this.#eof = true;
    await this.#it.return?.();
  }

  /**
   * The next step, or null at the end of the log. Answers synchronously while the record is
   * in the current window; returns a promise when it must read more.
   */
  next(): ReadStep | null | Promise<ReadStep | null> {
    const offset = this.#offset;
    const rel = offset - this.#winStart;
    if (rel >= this.#win.length) {
      if (this.#eof) return null;
      return this.#fill(offset, RECORD_HEADER_SIZE).then((more) => (more ? this.next() : null));
    }
    const probe = probeRecord(this.#win, rel);
    if (probe.kind === "ok") {
      this.#offset = offset + probe.length;
      return { kind: "record", offset, header: probe, buf: this.#win, at: rel, segment: this.#segment, segmentOffset: offset - this.#segmentStart };
    }
    if (probe.kind === "bad") {
      return {
        kind: "bad",
        offset,
        segment: this.#segment,
        segmentOffset: offset - this.#segmentStart,
        what: probe.what,
        ...(probe.version !== undefined && { version: probe.version }),
        ...(probe.length !== undefined && { length: probe.length }),
      };
    }
    if (this.#segmentEnd) return this.#short(offset, probe.needed);
    return this.#fill(offset, probe.needed).then(() => this.next());
  }

  /** A record cut short by its segment's end: the log's last bytes, or damage inside it. */
  async #short(offset: number, needed: number): Promise<ReadStep> {
    const segment = this.#segment;
    const segmentOffset = offset - this.#segmentStart;
    const tail = this.#win.subarray(offset - this.#winStart);
    const next = this.#eof ? undefined : await this.#pull();
    if (next) {
      this.#win = Buffer.concat([tail, next.bytes]);
      this.#winStart = offset;
    }
    return { kind: "short", offset, segment, segmentOffset, last: next === undefined, needed };
  }

  /**
   * Makes the window hold at least `needed` bytes from `offset`, or all there are up to the
   * end of the segment. Returns false when the log has nothing at `offset`.
   */
  async #fill(offset: number, needed: number): Promise<boolean> {
    let keep = this.#win.subarray(offset - this.#winStart);
    while (keep.length < needed) {
      if (keep.length > 0 && this.#segmentEnd) break;
      const chunk = await this.#pull();
      if (!chunk) break;
      const want = needed - keep.length;
      if (keep.length === 0) keep = chunk.bytes;
      else if (chunk.bytes.length <= want) keep = Buffer.concat([keep, chunk.bytes]);
      else {
        // A record straddles two chunks: only its own bytes are copied, and the rest of the
        // chunk is the next window (a copy of whole multi-MiB chunks cost a major GC or two
        // per 100 MB read, through the external memory they allocate).
        keep = Buffer.concat([keep, chunk.bytes.subarray(0, want)]);
        this.#rest = { ...chunk, offset: chunk.offset + want, bytes: chunk.bytes.subarray(want) };
        this.#segmentEnd = false;
      }
    }
    this.#win = keep;
    this.#winStart = offset;
    return keep.length > 0;
  }

  async #pull(): Promise<LogChunk | undefined> {
    const rest = this.#rest;
    if (rest) {
      // Of the segment already current.
      this.#rest = undefined;
      this.#segmentEnd = rest.segmentEnd;
      return rest;
    }
    for (;;) {
      const r = await this.#it.next();
      if (r.done) {
        this.#eof = true;
        return undefined;
      }
      this.#segmentStart = r.value.segmentStart;
      this.#segment = r.value.segment;
      this.#segmentEnd = r.value.segmentEnd;
      if (r.value.bytes.length > 0 || r.value.segmentEnd) return r.value;
    }
  }

  /**
   * Whether an intact record starts anywhere after `offset`. Reads on to the end of the log,
   * so only the damage path calls it; the reader is spent afterwards.
   */
  async intactRecordAfter(offset: number): Promise<number | undefined> {
    let from = offset + 1;
    for (;;) {
      const rel = Math.max(0, from - this.#winStart);
      const i = this.#win.indexOf(RECORD_MAGIC, rel);
      if (i < 0) {
        // Keep the last 3 bytes: a magic may straddle two chunks.
        const keepFrom = Math.max(from, this.#winStart + this.#win.length - 3);
        if (this.#eof || !(await this.#fillMore(keepFrom))) return undefined;
        from = keepFrom;
        continue;
      }
      const at = this.#winStart + i;
      let probe = probeRecord(this.#win, i);
      while (probe.kind === "short" && !this.#eof && (await this.#fillMore(at))) probe = probeRecord(this.#win, at - this.#winStart);
      if (probe.kind === "ok") return at;
      from = at + 1;
    }
  }

  /** Appends the next chunk to the window, keeping what is at `offset` on, across segments; false at the end. */
  async #fillMore(offset: number): Promise<boolean> {
    const chunk = await this.#pull();
    if (!chunk) return false;
    const winEnd = this.#winStart + this.#win.length;
    if (offset >= winEnd) {
      this.#win = chunk.bytes;
      this.#winStart = chunk.offset;
    } else {
      this.#win = Buffer.concat([this.#win.subarray(Math.max(0, offset - this.#winStart)), chunk.bytes]);
      this.#winStart = Math.max(offset, this.#winStart);
    }
    return true;
  }
}

/** File systems write data in sectors of at least this many bytes. */
const SECTOR = 512;

/**
 * Whether the bytes a log ends with (`tail`, from log offset `at` to the end, with no intact
 * record after them) are what a crash leaves mid-append, rather than damage: fewer bytes than
 * the record declares (appends are not atomic), or a record whose bytes are zero from a sector
 * boundary on (a file system that extended the file before the data reached those sectors). A
 * complete record whose checksum fails and that does not end in such zeros is damage: its last
 * bytes are its CRC, which is not zero. Only for storages whose appends are not atomic.
 */
export function isTornTail(step: Exclude<ReadStep, { kind: "record" }>, tail: Buffer, at: number): boolean {
  if (step.kind === "short") return step.last;
  let z = tail.length;
  while (z > 0 && tail[z - 1] === 0) z--;
  if (z === tail.length) return false;
  return z === 0 || Math.ceil((at + z) / SECTOR) * SECTOR < at + tail.length;
}
