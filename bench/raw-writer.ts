/**
 * The limit for `tidemark ingest` (bench/cli.ts): a node process that makes the bytes it reads
 * durable and acks them, and does nothing else.
 *
 *   raw-writer once <file>    reads stdin whole (one record's bytes), appends it to <file>,
 *                             fdatasyncs, prints one ack line: one change per process
 *   raw-writer lines <file>   reads stdin line by line, as `tidemark ingest` does (readline);
 *                             for each line appends it to <file>, fdatasyncs, prints an ack line
 */
import fs from "node:fs";
import readline from "node:readline";

const [mode, file] = process.argv.slice(2);
if ((mode !== "once" && mode !== "lines") || !file) throw new Error("usage: raw-writer once|lines <file>");

const fd = fs.openSync(file, "a");
if (mode === "once") {
  const bytes = fs.readFileSync(0);
  fs.writeSync(fd, bytes);
  fs.fdatasyncSync(fd);
  process.stdout.write(`{"bytes":${bytes.length},"action":"append"}\n`);
} else {
  let n = 0;
  for await (const line of readline.createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    fs.writeSync(fd, `${line}\n`);
    fs.fdatasyncSync(fd);
    process.stdout.write(`{"line":${++n},"action":"append"}\n`);
  }
}
fs.closeSync(fd);
