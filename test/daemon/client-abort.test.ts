import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { request, startDaemon, waitFor } from "../helpers/daemon.js";
import { tmpDir } from "../helpers/tmp.js";

/** Sends the head of a request and `part` of a body declared longer, then closes the connection. */
function halfRequest(socket: string, head: string, part: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socket);
    c.once("error", reject);
    c.once("connect", () => {
      c.write(head);
      c.write(part, () => {
        // A moment for the daemon to start reading the body, then the client is gone.
        setTimeout(() => {
          c.destroy();
          resolve();
        }, 30);
      });
    });
  });
}

/** The value of one series of tidemark_errors_total. */
function errorsOf(metrics: string, code: string): number {
  const m = new RegExp(`^tidemark_errors_total\\{db="default",code="${code}"\\} (\\d+)$`, "m").exec(metrics);
  if (!m) throw new Error(`no tidemark_errors_total series for ${code}`);
  return Number(m[1]);
}

describe("clients that go away mid-request", () => {
  it("are a debug line: no error counted, no error-level log, no stack trace, and the database carries on", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, { log: { level: "debug" }, databases: [{ name: "default", backend: "data" }] });
    try {
      expect((await request(d.socket, "POST", "/v1/dbs/default/changes", JSON.stringify({ version: 1, transaction: ["CREATE TABLE t (x)"] }))).status).toBe(200);
      const before = (await request(d.socket, "GET", "/metrics")).body.toString();
      expect(errorsOf(before, "E_INTERNAL")).toBe(0);

      const body = Buffer.from(JSON.stringify({ version: 2, transaction: ["INSERT INTO t VALUES (2)"] }));
      const db = new Database(path.join(dir, "snap.db"));
      db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
      db.close();
      const snapshot = fs.readFileSync(path.join(dir, "snap.db"));
      // A slowloris-ish run: many changes and snapshot uploads cut off half-way.
      for (let i = 0; i < 20; i++) {
        await halfRequest(d.socket, `POST /v1/dbs/default/changes HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`, body.subarray(0, 10));
        await halfRequest(
          d.socket,
          `POST /v1/dbs/default/snapshot?version=5 HTTP/1.1\r\nHost: x\r\nContent-Length: ${snapshot.length}\r\n\r\n`,
          snapshot.subarray(0, snapshot.length / 2),
        );
      }
      await waitFor(() => (d.logs().match(/client went away mid-request/g) ?? []).length >= 40, 10_000, d.logs);

      const after = (await request(d.socket, "GET", "/metrics")).body.toString();
      for (const code of ["E_INTERNAL", "E_BACKEND", "E_INPUT"]) expect(errorsOf(after, code)).toBe(0);
      const lines = d.logs().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { level: number; msg: string; err?: { stack?: string } });
      expect(lines.filter((l) => l.level >= 50)).toEqual([]);
      expect(lines.filter((l) => l.err?.stack !== undefined)).toEqual([]);
      const status = (await request(d.socket, "GET", "/v1/dbs/default")).json();
      expect(status.errors).toEqual([]);
      expect(status.version).toBe(1);

      // Nothing of the broken-off uploads was kept.
      expect(fs.readdirSync(path.join(dir, "data")).filter((n) => n.endsWith(".tmp") || n.startsWith("snap-"))).toEqual([]);

      // A client that sends the whole change and hangs up before the ack: the change is durable
      // (the host, seeing no ack, does not commit, and redoes the version), and that is no error either.
      await halfRequest(d.socket, `POST /v1/dbs/default/changes HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`, body);
      await waitFor(async () => (await request(d.socket, "GET", "/v1/dbs/default")).json().version === 2, 10_000, d.logs);
      const last = (await request(d.socket, "GET", "/metrics")).body.toString();
      for (const code of ["E_INTERNAL", "E_BACKEND", "E_INPUT"]) expect(errorsOf(last, code)).toBe(0);
      expect(d.logs()).not.toMatch(/"level":50/);
      const next = JSON.stringify({ version: 3, transaction: ["INSERT INTO t VALUES (3)"] });
      expect((await request(d.socket, "POST", "/v1/dbs/default/changes", next)).json()).toEqual({ version: 3, action: "append" });
    } finally {
      await d.stop();
    }
  });
});
