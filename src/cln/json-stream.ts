/**
 * Framing for Core Lightning's plugin protocol: JSON-RPC 2.0 objects back to back on a stream.
 *
 * lightningd separates messages with a blank line, but nothing guarantees that a read ends on a
 * message boundary, or that a message holds no newline. So the splitter tracks nesting and
 * string state across chunks and cuts each complete top-level value out as it closes.
 */
import { StringDecoder } from "node:string_decoder";

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Splits a byte stream into the text of complete JSON objects and arrays. */
export class JsonStreamSplitter {
  readonly #decoder = new StringDecoder("utf8");
  readonly #onJunk: (text: string) => void;
  #buf = "";
  /** Where scanning resumes, so a large message arriving in many chunks is scanned once. */
  #pos = 0;
  /** Start of the value being read, or -1 between values. */
  #start = -1;
  #depth = 0;
  #inString = false;
  #escaped = false;

  /** `onJunk` receives anything between values that is neither whitespace nor JSON. */
  constructor(onJunk: (text: string) => void) {
    this.#onJunk = onJunk;
  }

  /** Takes the next chunk and returns the values it completed, in order. */
  push(chunk: Buffer | string): string[] {
    this.#buf += typeof chunk === "string" ? chunk : this.#decoder.write(chunk);
    const out: string[] = [];
    let junkFrom = -1;
    const buf = this.#buf;
    for (let i = this.#pos; i < buf.length; i++) {
      const c = buf.charCodeAt(i);
      if (this.#start < 0) {
        if (c === OPEN_BRACE || c === OPEN_BRACKET) {
          if (junkFrom >= 0) this.#onJunk(buf.slice(junkFrom, i));
          junkFrom = -1;
          this.#start = i;
          this.#depth = 1;
        } else if (!isWhitespace(c) && junkFrom < 0) {
          junkFrom = i;
        }
        continue;
      }
      if (this.#inString) {
        if (this.#escaped) this.#escaped = false;
        else if (c === BACKSLASH) this.#escaped = true;
        else if (c === QUOTE) this.#inString = false;
        continue;
      }
      if (c === QUOTE) this.#inString = true;
      else if (c === OPEN_BRACE || c === OPEN_BRACKET) this.#depth++;
      else if ((c === CLOSE_BRACE || c === CLOSE_BRACKET) && --this.#depth === 0) {
        out.push(buf.slice(this.#start, i + 1));
        this.#start = -1;
      }
    }
    if (junkFrom >= 0) this.#onJunk(buf.slice(junkFrom));
    // Keep only the unfinished value, so the buffer never grows with handled messages.
    const keepFrom = this.#start >= 0 ? this.#start : buf.length;
    this.#buf = buf.slice(keepFrom);
    this.#pos = buf.length - keepFrom;
    if (this.#start >= 0) this.#start = 0;
    return out;
  }

  /** Bytes of an unfinished value held back, waiting for the rest of it. */
  get pending(): number {
    return this.#buf.length;
  }
}

function isWhitespace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}
