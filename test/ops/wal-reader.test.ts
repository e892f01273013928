/**
 * The WAL reader and the capture loop in-process, against WAL files SQLite itself wrote.
 */
import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import { encodeChangeRecord, probeRecord, decodeRecord, type RecordHeader } from "../../src/format/record-codec.js";
import { lockPage } from "../../src/format/captured-body.js";
import { Capture } from "../../src/ops/capture.js";
import { restore } from "../../src/ops/restore.js";
import { WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalFile, startOf } from "../../src/ops/wal-reader.js";
import type { Logger } from "../../src/util/logger.js";
import { expectSameDb } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

function appDb(file: string): Database.Database {
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  // The WAL keeps every frame: nothing checkpoints behind the test's back.
  db.pragma("wal_autocheckpoint = 0");
  db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB, at TEXT)");
  return db;
}

function insert(db: Database.Database, n: number): void {
  const st = db.prepare("INSERT INTO t (b, at) VALUES (randomblob(?), datetime('now'))");
  for (let i = 0; i < n; i++) st.run(100 + i * 700);
}

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log = (msg: string) => lines.push(msg);
  const logger = { lines, debug: (_: object, m: string) => log(m), info: (_: object, m: string) => log(m), warn: (_: object, m: string) => log(m), error: (_: object, m: string) => log(m), child: () => logger };
  return logger;
}

describe("WAL reader", () => {
  it("reads each committed transaction SQLite wrote, and a damaged frame ends the WAL before it", () => {
    const dir = tmpDir();
    const file = path.join(dir, "app.db");
    const db = appDb(file);
    insert(db, 6);
    const pages = Number(db.pragma("page_count", { simple: true }));
    const wal = new WalFile(`${file}-wal`);
    try {
      const header = wal.header()!;
      expect(header.pageSize).toBe(4096);
      const all = wal.transactions(header, startOf(header));
      // CREATE TABLE, then six inserts.
      expect(all).toHaveLength(7);
      expect(all.at(-1)!.dbPages).toBe(pages);
      expect(wal.holds(header, all[3]!.end)).toBe(true);
      // One flipped byte in the page of the fifth transaction's first frame.
      const bad = all[3]!.end.frame + 1;
      const fd = fs.openSync(`${file}-wal`, "r+");
      const at = WAL_HEADER_SIZE + (bad - 1) * (WAL_FRAME_HEADER_SIZE + 4096) + WAL_FRAME_HEADER_SIZE + 100;
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      b.writeUInt8(b.readUInt8(0) ^ 0xff, 0);
      fs.writeSync(fd, b, 0, 1, at);
      fs.closeSync(fd);
      expect(wal.transactions(header, startOf(header))).toHaveLength(4);
      // A damaged header is no WAL at all.
      const hfd = fs.openSync(`${file}-wal`, "r+");
      fs.writeSync(hfd, Buffer.from([0x30]), 0, 1, 10); // page size 0x3000: the header checksum fails
      fs.closeSync(hfd);
      expect(wal.header()).toBeNull();
    } finally {
      wal.close();
      db.close();
    }
  });

  it("never stores the lock page: a captured change naming it is refused", () => {
    const pageSize = 4096;
    const data = Buffer.alloc(pageSize, 7);
    const wal = { salt1: 1, salt2: 2, frame: 3, checksum1: 4, checksum2: 5 };
    const ok = encodeChangeRecord({ version: 2, timestamp: 1, captured: { pageSize, dbPages: 300_000, transactions: 1, wal, pages: [{ pgno: 5, data }] } });
    const header = probeRecord(ok, 0) as RecordHeader;
    expect(decodeRecord(ok, 0, header, "x").captured).toEqual({ pageSize, dbPages: 300_000, transactions: 1, wal, pages: [{ pgno: 5, data }] });
    expect(lockPage(pageSize)).toBe(262_145);
    expect(() => encodeChangeRecord({ version: 2, timestamp: 1, captured: { pageSize, dbPages: 300_000, transactions: 1, wal, pages: [{ pgno: 262_145, data }] } })).toThrow(/lock page/);
  });
});

describe("capture loop", () => {
  it("follows the WAL after the application's own TRUNCATE checkpoint, which succeeds right after the capture's checkpoint", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "app.db");
    const backup = path.join(dir, "backup");
    const app = appDb(file);
    insert(app, 3);
    const backend = await openBackend(backup, { mode: "create", capture: true });
    const log = recordingLogger();
    const capture = new Capture(file, backend, { log });
    try {
      await capture.open();
      insert(app, 10);
      await capture.poll();
      await capture.checkpoint();
      const [row] = app.pragma("wal_checkpoint(TRUNCATE)") as { busy: number }[];
      expect(row!.busy).toBe(0);
      expect(fs.statSync(`${file}-wal`).size).toBe(0);
      insert(app, 10);
      app.exec("DELETE FROM t WHERE id % 4 = 0");
      await capture.poll();
      expect(capture.status().lagTransactions).toBe(0);
    } finally {
      await capture.close();
    }
    expect(log.lines).toContain("the WAL restarted (new salts): following it from its first frame");
    const dest = path.join(dir, "restored.db");
    await restore(backend, dest);
    await backend.close();
    expectSameDb(dest, file);
    app.close();
  });
});
