/**
 * Opening a backup with and without its log index (docs/format.md, "Log index"), BENCH_ONLY=open:
 *
 *   open, N changes    a writer's open + close of a backup of N single-statement changes whose
 *                      log has an index, vs the same open with the index moved aside (the full
 *                      scan every open did before); wall and CPU; and a read-only open (status),
 *                      the same way. Only the open is timed (a close after a full scan writes
 *                      the index, which the old code did not).
 *   floor              reading the log once and computing its CRC-32: what checking the index
 *                      costs at least (every covered byte is read), printed beside it.
 *
 * Environment: BENCH_OPEN_CHANGES (default BENCH_CHANGES), BENCH_OPEN_ROUNDS (default 5,
 * alternating with and without, the median of each reported).
 */
import fs from "node:fs";
import path from "node:path";
import { crc32 } from "node:zlib";
import { openBackend } from "../src/backup/registry.js";
import { measured, type Times } from "./read-path.js";
import { ms, percentile, type Row } from "./table.js";

const CREATE = [{ sql: "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)" }];

function statement(v: number) {
  return [{ sql: `INSERT INTO ledger (id, account, amount, memo) VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')` }];
}

export async function benchOpen(dir: string, rows: Row[], changes: number): Promise<void> {
  const location = path.join(dir, "backup");
  fs.mkdirSync(dir, { recursive: true });
  const b = await openBackend(location, { mode: "create" });
  for (let v = 1; v <= changes; ) {
    const batch = [];
    for (; v <= changes && batch.length < 2000; v++) batch.push({ version: v, timestamp: Date.now(), transaction: v === 1 ? CREATE : statement(v) });
    await b.addChanges(batch);
  }
  await b.close();
  const index = path.join(location, "log-0000000001.tmi");
  const aside = `${index}.aside`;
  const log = path.join(location, "log-0000000001.tml");
  if (!fs.existsSync(index)) throw new Error("bench open: the writer's close wrote no index");
  const rounds = Number(process.env.BENCH_OPEN_ROUNDS ?? 5);
  const times: Record<string, Times[]> = { writeIndexed: [], writeScan: [], readIndexed: [], readScan: [], floor: [] };
  /** Times the open (and a reader's status), not the close: a close after a full scan writes the index. */
  const open = async (mode: "write" | "read") => {
    let x: Awaited<ReturnType<typeof openBackend>> | undefined;
    const t = await measured(async () => {
      x = await openBackend(location, { mode });
      if (mode === "read") await x.status();
    });
    await x!.close();
    return t;
  };
  for (let i = 0; i < rounds; i++) {
    times.writeIndexed!.push(await open("write"));
    times.readIndexed!.push(await open("read"));
    fs.renameSync(index, aside);
    times.writeScan!.push(await open("write"));
    // The writer's close wrote a fresh index: gone again for the reader; the one set aside comes back.
    fs.rmSync(index);
    times.readScan!.push(await open("read"));
    fs.renameSync(aside, index);
    times.floor!.push(await measured(() => crc32(fs.readFileSync(log))));
  }
  const med = (k: string, f: "wallMs" | "cpuMs") => percentile(times[k]!.map((t) => t[f]), 50);
  const size = (fs.statSync(log).size / 2 ** 20).toFixed(1);
  for (const [mode, label] of [["write", "writer"], ["read", "reader (status)"]] as const) {
    const k = mode === "write" ? "write" : "read";
    const [iw, sw, ic, sc] = [med(`${k}Indexed`, "wallMs"), med(`${k}Scan`, "wallMs"), med(`${k}Indexed`, "cpuMs"), med(`${k}Scan`, "cpuMs")];
    rows.push({
      target: `open of ${changes.toLocaleString("en-US")} changes (${size} MiB log), ${label}, with its index`,
      measured: ms(iw),
      limit: `${ms(sw)} full scan (read once + CRC: ${ms(med("floor", "wallMs"))})`,
      ratio: iw / sw,
      goal: "< 1 (no goal in the issue)",
      ok: iw < sw && ic < sc,
      cpu: { measured: ms(ic), limit: ms(sc), ratio: ic / sc },
    });
  }
}
