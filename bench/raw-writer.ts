/**
 * The limit for `tidemark ingest` (bench/cli.ts): a node process that makes the bytes it reads
 * durable and acks them, and does nothing else.
 *
 *   raw-writer once <file>    reads stdin whole (one record's bytes), appends it to <file>,
 *                             fdatasyncs, prints one ack line: one change per process
 *   raw-writer lines <file>   reads stdin line by line, as `tidemark ingest` does (readline);
 *                             for each line appends it to <file>, fdatasyncs, prints an ack line
 *   raw-writer socket <file> <socket>
 *                             the floor of an ack over a Unix socket (bench/daemon.ts): listens
 *                             on <socket>, prints "ready"; for each frame (4-byte big-endian
 *                             length, then the bytes) appends the bytes to <file>, fdatasyncs,
 *                             and answers a frame of a 2-byte status and a short JSON ack
 */
import fs from "node:fs";
import net from "node:net";
import readline from "node:readline";

const [mode, file, socketPath] = process.argv.slice(2);
if ((mode !== "once" && mode !== "lines" && mode !== "socket") || !file || (mode === "socket" && !socketPath)) {
  throw new Error("usage: raw-writer once|lines <file> | raw-writer socket <file> <socket>");
}

const fd = fs.openSync(file, "a");
if (mode === "once") {
  const bytes = fs.readFileSync(0);
  fs.writeSync(fd, bytes);
  fs.fdatasyncSync(fd);
  process.stdout.write(`{"bytes":${bytes.length},"action":"append"}\n`);
} else if (mode === "socket") {
  const ack = Buffer.from('{"version":0,"action":"append"}');
  net
    .createServer((socket) => {
      let pending: Buffer = Buffer.alloc(0);
      socket.on("data", (chunk: Buffer) => {
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
          const length = pending.readUInt32BE(0);
          fs.writeSync(fd, pending, 4, length);
          fs.fdatasyncSync(fd);
          const answer = Buffer.allocUnsafe(6 + ack.length);
          answer.writeUInt32BE(2 + ack.length, 0);
          answer.writeUInt16BE(200, 4);
          ack.copy(answer, 6);
          socket.write(answer);
          pending = pending.subarray(4 + length);
        }
      });
    })
    .listen(socketPath, () => process.stdout.write("ready\n"));
} else {
  let n = 0;
  for await (const line of readline.createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    fs.writeSync(fd, `${line}\n`);
    fs.fdatasyncSync(fd);
    process.stdout.write(`{"line":${++n},"action":"append"}\n`);
  }
}
if (mode !== "socket") fs.closeSync(fd);
