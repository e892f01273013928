import { describe, expect, it } from "vitest";
import { JsonStreamSplitter } from "../../src/cln/json-stream.js";

function split(chunks: (string | Buffer)[]): { values: unknown[]; junk: string[] } {
  const junk: string[] = [];
  const splitter = new JsonStreamSplitter((j) => junk.push(j));
  const values = chunks.flatMap((c) => splitter.push(c)).map((t) => JSON.parse(t));
  return { values, junk };
}

const MESSAGES = [
  { jsonrpc: "2.0", id: 1, method: "getmanifest", params: {} },
  { jsonrpc: "2.0", id: "cln:db_write#7", method: "db_write", params: { data_version: 7, writes: ["INSERT INTO t VALUES ('}{ \\\" ] [', x'00')"] } },
  { jsonrpc: "2.0", method: "shutdown", params: [] },
];

describe("cln-json-stream: plugin protocol framing", () => {
  it("splits messages separated by blank lines, as lightningd sends them", () => {
    const text = MESSAGES.map((m) => JSON.stringify(m)).join("\n\n") + "\n\n";
    expect(split([text])).toEqual({ values: MESSAGES, junk: [] });
  });

  it("splits messages back to back, or pretty-printed over several lines", () => {
    const text = JSON.stringify(MESSAGES[0]) + JSON.stringify(MESSAGES[1]) + "\r\n\t " + JSON.stringify(MESSAGES[2], null, 2);
    expect(split([text]).values).toEqual(MESSAGES);
  });

  it("reassembles a message from any chunking, one byte at a time included, even inside a UTF-8 character", () => {
    const message = { jsonrpc: "2.0", id: 2, method: "db_write", params: { data_version: 1, writes: ["INSERT INTO t VALUES ('☃ é \\\\')"] } };
    const bytes = Buffer.from(`${JSON.stringify(message)}\n\n${JSON.stringify(MESSAGES[0])}`);
    const chunks = [...bytes].map((b) => Buffer.from([b]));
    expect(split(chunks).values).toEqual([message, MESSAGES[0]]);
  });

  it("keeps only the unfinished message between chunks", () => {
    const splitter = new JsonStreamSplitter(() => {});
    const text = JSON.stringify(MESSAGES[1]);
    expect(splitter.push(`${JSON.stringify(MESSAGES[0])}\n\n${text.slice(0, 20)}`)).toHaveLength(1);
    expect(splitter.pending).toBe(20);
    expect(splitter.push(text.slice(20)).map((t) => JSON.parse(t))).toEqual([MESSAGES[1]]);
    expect(splitter.pending).toBe(0);
  });

  it("reports text between messages that is not JSON, and carries on", () => {
    const { values, junk } = split([`garbage ${JSON.stringify(MESSAGES[0])} more`, ` ${JSON.stringify(MESSAGES[2])}`]);
    expect(values).toEqual([MESSAGES[0], MESSAGES[2]]);
    expect(junk).toEqual(["garbage ", "more"]);
  });
});
