// @ts-check
/**
 * The replay worker thread: runs a {@link ReplaySqlite} for replay.ts's `SqliteWorker`, so that
 * reading and decoding the backup on the main thread overlaps with SQLite executing statements
 * here. Each message `{id, op, ...}` gets `{id, ok, result | error}`.
 *
 * Plain JavaScript on purpose: worker threads load files as they are, and this one must run both
 * from dist/ and from the sources under test.
 */
import { parentPort } from "node:worker_threads";
import { ReplaySqlite } from "./replay-sqlite.js";

const sqlite = new ReplaySqlite();
const port = parentPort;
if (!port) throw new Error("replay-worker.js runs as a worker thread");
port.on("message", (/** @type {any} */ msg) => {
  const fail = (/** @type {any} */ err) =>
    port.postMessage({ id: msg.id, ok: false, error: { message: String(err?.message ?? err), at: err?.at, sql: err?.sql } });
  try {
    const result = sqlite.handle(msg);
    if (result instanceof Promise) result.then((r) => port.postMessage({ id: msg.id, ok: true, result: r }), fail);
    else port.postMessage({ id: msg.id, ok: true, result });
  } catch (err) {
    fail(err);
  }
});
