/**
 * What checking a change against the shadow costs (issue 12): the validated ack (applyChange,
 * the change applied in the backup's shadow before its record is synced) against a raw append +
 * fdatasync of the same bytes, in the same run, rounds interleaved; beside it the ack without
 * the check, and the CPU time per ack of each.
 */
import fs from "node:fs";
import path from "node:path";
import { openBackend } from "../src/backup/registry.js";
import { encodeChangeRecord } from "../src/format/record-codec.js";
import { applyChange, closeShadow } from "../src/ops/ingest.js";
import { writeAll } from "../src/util/durable-fs.js";
import { ms, percentile, type Row } from "./table.js";

const CREATE = "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)";
const statementFor = (v: number) => `INSERT INTO ledger (id, account, amount, memo) VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')`;

/** Adds the rows "validated ack p50/p99" and "unchecked ack p50" against raw append+fdatasync. */
export async function benchShadow(dir: string, rows: Row[], rounds: number): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  process.env.TIDEMARK_SHADOW_DIR ??= path.join(dir, "shadows");
  const checked = await openBackend(path.join(dir, "checked"), { mode: "create" });
  const unchecked = await openBackend(path.join(dir, "unchecked"), { mode: "create" });
  const fd = fs.openSync(path.join(dir, "raw.log"), "w");
  let rawPos = 0;
  const lat = { checked: [] as number[], unchecked: [] as number[], raw: [] as number[] };
  const cpu = { checked: 0, unchecked: 0, raw: 0 };
  await applyChange(checked, { version: 1, transaction: [CREATE] });
  await applyChange(unchecked, { version: 1, transaction: [CREATE] }, { validate: false });
  const measure = async (key: keyof typeof lat, fn: () => Promise<unknown> | void) => {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await fn();
    lat[key].push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu[key] += (c.user + c.system) / 1000;
  };
  for (let v = 2; v <= rounds + 1; v++) {
    const transaction = [statementFor(v)];
    const timestamp = Date.now();
    const bytes = encodeChangeRecord({ version: v, timestamp, transaction });
    const steps = [
      () => measure("checked", () => applyChange(checked, { version: v, timestamp, transaction })),
      () => measure("unchecked", () => applyChange(unchecked, { version: v, timestamp, transaction }, { validate: false })),
      () =>
        measure("raw", () => {
          writeAll(fd, bytes, rawPos);
          fs.fdatasyncSync(fd);
          rawPos += bytes.length;
        }),
    ];
    // Rotate the order so that no side always runs on a warmer cache.
    for (let i = 0; i < steps.length; i++) await steps[(v + i) % steps.length]!();
  }
  fs.closeSync(fd);
  closeShadow(checked);
  await checked.close();
  await unchecked.close();
  const raw50 = percentile(lat.raw, 50);
  const cpuPer = (k: keyof typeof cpu) => ms(cpu[k] / rounds);
  for (const p of [50, 99]) {
    const a = percentile(lat.checked, p);
    const b = percentile(lat.raw, p);
    rows.push({
      target: `validated ack p${p} (file, shadow; cpu ${cpuPer("checked")}/ack)`,
      measured: ms(a),
      limit: `${ms(b)} raw append+fdatasync (cpu ${cpuPer("raw")})`,
      ratio: a / b,
      goal: p === 50 ? "≤ 1.3" : "report",
      ok: p === 50 ? a / b <= 1.3 : true,
    });
  }
  const u = percentile(lat.unchecked, 50);
  rows.push({
    target: `unchecked ack p50 (validate: false; cpu ${cpuPer("unchecked")}/ack)`,
    measured: ms(u),
    limit: `${ms(raw50)} raw append+fdatasync`,
    ratio: u / raw50,
    goal: "report",
    ok: true,
  });
}
