/**
 * The socket's ingest channel (src/daemon/ingest-channel.ts, docs/daemon.md "Ingest channel"),
 * against a real daemon child: the client's default path on a socket, the frames byte by byte,
 * errors that leave the channel usable, a frame over the limit, the fallback to HTTP, a drain
 * on SIGTERM, and every acknowledged change restored after a SIGKILL.
 */
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect } from "../../src/host/client.js";
import { GapError, TidemarkError } from "../../src/util/errors.js";
import { runCli } from "../helpers/cli.js";
import { request, startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { rows } from "../helpers/sqlite.js";

const insert = (v: number) => [`INSERT INTO t VALUES (${v}, 'row ${v}')`];
const CREATE = ["CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)"];

/** An upgraded raw connection: send frames, read answers as the documented bytes. */
async function rawChannel(socket: string, db: string): Promise<{ head: string; send(body: Buffer | string): void; answer(): Promise<{ status: number; json: any }>; closed: Promise<void>; end(): void }> {
  const c = net.connect(socket);
  let buf = Buffer.alloc(0);
  let wake: (() => void) | null = null;
  c.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  const closed = new Promise<void>((r) => c.once("close", () => r()));
  const more = () => new Promise<void>((r) => (wake = r));
  await new Promise<void>((r) => c.once("connect", () => r()));
  c.write(`GET /v1/dbs/${db}/ingest HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: tidemark-ingest/1\r\n\r\n`);
  while (buf.indexOf("\r\n\r\n") < 0) await more();
  const end = buf.indexOf("\r\n\r\n") + 4;
  const head = buf.subarray(0, end).toString("latin1");
  buf = buf.subarray(end);
  return {
    head,
    send(body) {
      const b = Buffer.from(body);
      const len = Buffer.alloc(4);
      len.writeUInt32BE(b.length);
      c.write(Buffer.concat([len, b]));
    },
    async answer() {
      while (buf.length < 4 || buf.length < 4 + buf.readUInt32BE(0)) await more();
      const length = buf.readUInt32BE(0);
      const status = buf.readUInt16BE(4);
      const json = JSON.parse(buf.toString("utf8", 6, 4 + length));
      buf = buf.subarray(4 + length);
      return { status, json };
    },
    closed,
    end: () => c.end(),
  };
}

describe("daemon: the socket's ingest channel", () => {
  let d: DaemonProcess;
  let dir: string;
  const config = {
    maxChangeBytes: 4096,
    databases: ["a", "raw", "flow", "kill"].map((name) => ({ name, backend: `tidemark-data/${name}` })),
  };
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-channel-"));
    d = await startDaemon(dir, config);
  });
  afterAll(async () => {
    await d?.stop();
  });

  it("frames are a 4-byte length and JSON; answers a 2-byte status and the POST's JSON; a refusal leaves the channel open", async () => {
    const ch = await rawChannel(d.socket, "raw");
    expect(ch.head).toMatch(/^HTTP\/1\.1 101 /);
    expect(ch.head.toLowerCase()).toContain("upgrade: tidemark-ingest/1");
    ch.send(JSON.stringify({ version: 1, transaction: CREATE }));
    expect(await ch.answer()).toEqual({ status: 200, json: { version: 1, action: "append" } });
    // Two at once: answered in order.
    ch.send(JSON.stringify({ version: 2, transaction: insert(2) }));
    ch.send(JSON.stringify({ version: 3, transaction: insert(3) }));
    expect(await ch.answer()).toEqual({ status: 200, json: { version: 2, action: "append" } });
    expect(await ch.answer()).toEqual({ status: 200, json: { version: 3, action: "append" } });
    ch.send("{not json");
    const bad = await ch.answer();
    expect(bad.status).toBe(400);
    expect(bad.json.code).toBe("E_INPUT");
    ch.send(JSON.stringify({ version: 9, transaction: insert(9) }));
    const gap = await ch.answer();
    expect(gap.status).toBe(409);
    expect(gap.json).toMatchObject({ code: "E_GAP", head: 3 });
    ch.send(JSON.stringify({ version: 4, transaction: ["INSERT INTO missing VALUES (1)"] }));
    expect((await ch.answer()).json.code).toBe("E_REPLAY");
    // Still usable after every refusal; nothing refused was stored.
    ch.send(JSON.stringify({ version: 4, transaction: insert(4) }));
    expect(await ch.answer()).toEqual({ status: 200, json: { version: 4, action: "append" } });
    // A frame over maxChangeBytes is not read: 413, and the channel closes.
    const big = Buffer.alloc(5000, 0x20);
    ch.send(big);
    const tooLarge = await ch.answer();
    expect(tooLarge.status).toBe(413);
    expect(tooLarge.json.code).toBe("E_TOO_LARGE");
    await ch.closed;
    const status = (await request(d.socket, "GET", "/v1/dbs/raw")).json();
    expect(status.version).toBe(4);
  });

  it("refuses an upgrade to an unknown database or protocol over HTTP, with the JSON error", async () => {
    const c = net.connect(d.socket);
    const reply = await new Promise<string>((resolve) => {
      let out = "";
      c.on("data", (x) => (out += x));
      c.once("close", () => resolve(out));
      c.write("GET /v1/dbs/nope/ingest HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: tidemark-ingest/1\r\n\r\n");
    });
    expect(reply).toMatch(/^HTTP\/1\.1 404 /);
    expect(JSON.parse(reply.slice(reply.indexOf("\r\n\r\n") + 4)).code).toBe("E_NOT_FOUND");
    // Without the Upgrade header the path is an ordinary (unknown) endpoint.
    expect((await request(d.socket, "GET", "/v1/dbs/a/ingest")).status).toBe(404);
  });

  it("is the client's path on a socket: pipelined changes, typed refusals, the HTTP fallback", async () => {
    const client = connect({ socket: d.socket, db: "a" });
    await client.addChange({ version: 1, transaction: CREATE });
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => client.addChange({ version: i + 2, transaction: insert(i + 2) })));
    expect(results.map((r) => r.version)).toEqual(Array.from({ length: 50 }, (_, i) => i + 2));
    // A retry of the head is acknowledged again, nothing written.
    expect(await client.addChange({ version: 51, transaction: insert(51) })).toEqual({ version: 51, action: "unchanged" });
    await expect(client.addChange({ version: 60, transaction: insert(60) })).rejects.toBeInstanceOf(GapError);
    client.close();
    // An unknown database: the upgrade is refused, the client falls back to HTTP, whose error it raises.
    const unknown = connect({ socket: d.socket, db: "nope", attempts: 1 });
    const err = await unknown.addChange({ version: 1, transaction: CREATE }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TidemarkError);
    expect((err as TidemarkError).code).toBe("E_NOT_FOUND");
    unknown.close();
    const status = (await request(d.socket, "GET", "/v1/dbs/a")).json();
    expect(status.version).toBe(51);
  });

  it("a host that sends without reading its answers is held back; once it reads, every change is answered in order and restores", async () => {
    const n = 20_000;
    const c = net.connect(d.socket);
    await new Promise<void>((r) => c.once("connect", () => r()));
    let buf = Buffer.alloc(0);
    let wake: (() => void) | null = null;
    c.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      wake?.();
    });
    const more = () => new Promise<void>((r) => (wake = r));
    c.write("GET /v1/dbs/flow/ingest HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: tidemark-ingest/1\r\n\r\n");
    while (buf.indexOf("\r\n\r\n") < 0) await more();
    expect(buf.toString("latin1")).toMatch(/^HTTP\/1\.1 101 /);
    buf = buf.subarray(buf.indexOf("\r\n\r\n") + 4);
    // The host stops reading, and sends all its changes: far more answers than the sockets' buffers hold.
    c.pause();
    const frame = (v: number) => {
      const body = Buffer.from(JSON.stringify({ version: v, transaction: v === 1 ? CREATE : insert(v) }));
      const len = Buffer.alloc(4);
      len.writeUInt32BE(body.length);
      return Buffer.concat([len, body]);
    };
    c.write(Buffer.concat(Array.from({ length: n }, (_, i) => frame(i + 1))));
    // The daemon stores what it read, then stops: the head settles well short of n.
    const headNow = async () => ((await request(d.socket, "GET", "/v1/dbs/flow")).json() as { version: number }).version;
    let head = -1;
    for (let last = -2; head !== last && head !== n; ) {
      last = head;
      await new Promise((r) => setTimeout(r, 500));
      head = await headNow();
    }
    expect(head).toBeGreaterThan(0);
    expect(head).toBeLessThan(n);
    // The host reads again: every change comes through, answered in the order sent.
    c.resume();
    for (let v = 1; v <= n; v++) {
      while (buf.length < 4 || buf.length < 4 + buf.readUInt32BE(0)) await more();
      const length = buf.readUInt32BE(0);
      const answer = { status: buf.readUInt16BE(4), json: JSON.parse(buf.toString("utf8", 6, 4 + length)) };
      buf = buf.subarray(4 + length);
      expect(answer).toEqual({ status: 200, json: { version: v, action: "append" } });
    }
    c.end();
    expect(await headNow()).toBe(n);
    const out = path.join(dir, "flow.db");
    const r = await runCli(["restore", path.join(dir, "tidemark-data/flow"), out]);
    expect(r.code, r.stderr).toBe(0);
    expect(rows(out, "SELECT id || ' ' || x FROM t ORDER BY id")).toEqual(Array.from({ length: n - 1 }, (_, i) => `${i + 2} row ${i + 2}`));
  }, 60_000);

  it("every change acknowledged over the channel is restored after a SIGKILL", async () => {
    const client = connect({ socket: d.socket, db: "kill", attempts: 1 });
    await client.addChange({ version: 1, transaction: CREATE });
    let acked = 1;
    const writer = (async () => {
      for (let v = 2; ; v++) {
        try {
          await client.addChange({ version: v, transaction: insert(v) });
        } catch {
          return;
        }
        acked = v;
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    d.child.kill("SIGKILL");
    await d.stop();
    const lastAcked = acked;
    await writer;
    client.close();
    expect(lastAcked).toBeGreaterThan(5);
    const out = path.join(dir, "restored.db");
    const r = await runCli(["restore", path.join(dir, "tidemark-data/kill"), out]);
    expect(r.code, r.stderr).toBe(0);
    const got = rows(out, "SELECT id || ' ' || x FROM t ORDER BY id");
    // Every acknowledged change is there, in order; at most the one in flight beyond it.
    expect(got.length === lastAcked - 1 || got.length === lastAcked).toBe(true);
    expect(got.slice(0, lastAcked - 1)).toEqual(Array.from({ length: lastAcked - 1 }, (_, i) => `${i + 2} row ${i + 2}`));
    // A new daemon on the same data, for afterAll and the drain test.
    d = await startDaemon(dir, config);
  });
});

describe("daemon: the ingest channel on stop", () => {
  it("answers the changes it received, then the daemon stops cleanly on SIGTERM", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-channel-stop-"));
    const d = await startDaemon(dir, { databases: [{ name: "s", backend: "tidemark-data/s" }] });
    const client = connect({ socket: d.socket, db: "s", attempts: 1 });
    await client.addChange({ version: 1, transaction: CREATE });
    const sent = Array.from({ length: 20 }, (_, i) => client.addChange({ version: i + 2, transaction: insert(i + 2) }).then(
      (r) => r.version,
      (e: TidemarkError) => e.code,
    ));
    const code = await d.stop();
    const outcomes = await Promise.all(sent);
    client.close();
    expect(code).toBe(0);
    // Whatever was acknowledged is in the backup, and nothing after a refusal was.
    const acked = outcomes.filter((o) => typeof o === "number") as number[];
    expect(acked).toEqual(Array.from({ length: acked.length }, (_, i) => i + 2));
    const out = path.join(dir, "restored.db");
    const r = await runCli(["restore", path.join(dir, "tidemark-data/s"), out]);
    expect(r.code, r.stderr).toBe(0);
    expect(rows(out, "SELECT id FROM t ORDER BY id")).toEqual(acked);
  });
});
