/**
 * What compression and client-side encryption cost, each variant against `none` (no
 * compression, no key) in the same run, on the file backend:
 *
 *   variants              gzip; brotli quality 1; AES-256-GCM alone; brotli q1 + AES-256-GCM
 *   ack latency           applyChange p50 and p99, each variant vs none. Every variant has its
 *                         own backup in the same directory; each round applies one change to
 *                         every variant, in an order rotated round by round, so none of them
 *                         always runs first (or last) on a warmer cache.
 *   restore               restore() changes/s, each variant vs none, over the same changes; each
 *                         backup is restored 5 times in rotated order and the median counts
 *   bytes stored          what status() reports the backup occupies, each variant vs none
 *
 * Each is measured on two change shapes:
 *
 *   ledger    the one-statement INSERT of bench/run.ts (a record of about 130 bytes). Too
 *             small for compression to pay: the codec tries, then stores the plain bytes, so
 *             this shape shows what trying costs.
 *   payment   a six-statement transaction of about 2.4 KB of SQL, shaped like what a Lightning
 *             node writes when a payment completes: hex hashes and keys, a bolt11 string, a
 *             JSON event, three HTLC rows. Hashes and keys come from a PRNG seeded with the
 *             version, so they compress as real ones written in hex do (to about half) and
 *             every run stores the same bytes. Compression has more to work on here.
 *
 * Restore and bytes stored use `changes` changes of each shape (BENCH_PROTECTION_CHANGES);
 * ack latency uses 4,000 rounds per shape (after 100 uncounted) on separate backups. On
 * stderr: the cost of sealing one record without the write, and the fill and restore times.
 */
import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { openBackend } from "../src/backup/registry.js";
import type { Backend, BackendOptions } from "../src/backup/backup.js";
import { encodeChangeRecord } from "../src/format/record-codec.js";
import { makeCodec } from "../src/format/sealing.js";
import { applyChange } from "../src/ops/ingest.js";
import { Keyring } from "../src/format/keyring.js";
import { restore } from "../src/ops/restore.js";
import { ms, percentile, timed, type Row } from "./table.js";

/** Ack rounds per shape; every round applies one change to every variant. */
const ACK_ROUNDS = 4000;
/** Rounds run first and not counted: the first appends also create files and warm the JIT. */
const ACK_WARMUP = 100;
/** Restores per backup; the median counts. */
const RESTORE_ROUNDS = 5;

interface Variant {
  name: string;
  options: (keyring: Keyring) => Omit<BackendOptions, "mode">;
}

const VARIANTS: readonly Variant[] = [
  { name: "none", options: () => ({ compression: "none" }) },
  { name: "gzip", options: () => ({ compression: "gzip" }) },
  { name: "brotli q1", options: () => ({ compression: "brotli", brotliQuality: 1 }) },
  { name: "zstd 3", options: () => ({ compression: "zstd" }) },
  { name: "AES-256-GCM", options: (keyring) => ({ compression: "none", keyring }) },
  { name: "brotli q1 + AES-256-GCM", options: (keyring) => ({ compression: "brotli", brotliQuality: 1, keyring }) },
];

interface Shape {
  name: string;
  create: string[];
  transaction: (v: number, timestamp: number) => string[];
}

// ------------------------------------------------------------ the change shapes

const LEDGER: Shape = {
  name: "ledger",
  create: ["CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)"],
  transaction: (v) => [`INSERT INTO ledger (id, account, amount, memo) VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')`],
};

/** mulberry32: a small seeded PRNG, so that the payment shape's bytes are the same every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

const PAYMENT: Shape = {
  name: "payment",
  create: [
    "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)",
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, updated_at INTEGER NOT NULL)",
    "CREATE TABLE payments (id INTEGER PRIMARY KEY, payment_hash BLOB NOT NULL, payment_preimage BLOB, destination BLOB, amount_msat INTEGER, amount_sent_msat INTEGER, status TEXT, created_at INTEGER, completed_at INTEGER, label TEXT, bolt11 TEXT, description TEXT)",
    "CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, created_at INTEGER NOT NULL, payload TEXT NOT NULL)",
    "CREATE TABLE htlcs (payment_id INTEGER NOT NULL, part INTEGER NOT NULL, channel_id BLOB NOT NULL, short_channel_id TEXT NOT NULL, amount_msat INTEGER NOT NULL, cltv_expiry INTEGER NOT NULL, state TEXT NOT NULL, PRIMARY KEY (payment_id, part))",
    `INSERT INTO accounts (id, balance, updated_at) VALUES ${Array.from({ length: 97 }, (_, i) => `(${i}, 1000000000, 0)`).join(", ")}`,
  ],
  transaction: (v, timestamp) => {
    const rnd = prng(v);
    const hex = (bytes: number) => Array.from({ length: bytes }, () => Math.floor(rnd() * 256).toString(16).padStart(2, "0")).join("");
    const int = (n: number) => Math.floor(rnd() * n);
    const hash = hex(32);
    const preimage = hex(32);
    const destination = `02${hex(32)}`;
    const amount = 1000 + int(5_000_000_000);
    const fee = int(amount / 1000) + 1;
    const parts = Array.from({ length: 3 }, (_, part) => ({
      part,
      channel: hex(32),
      scid: `${700000 + int(200000)}x${int(3000)}x${int(4)}`,
      amount: Math.floor((amount + fee) / 3),
      cltv: 800000 + int(2000),
    }));
    const bolt11 = `lnbc${Math.ceil(amount / 1000)}n1p${Array.from({ length: 300 }, () => BECH32[int(32)]).join("")}`;
    const from = v % 97;
    const to = (v * 7 + 1) % 97;
    const event = JSON.stringify({
      type: "sendpay_success",
      id: v,
      payment_hash: hash,
      destination,
      amount_msat: amount,
      amount_sent_msat: amount + fee,
      created_at: Math.floor(timestamp / 1000),
      status: "complete",
      parts: parts.map((p) => ({ partid: p.part, short_channel_id: p.scid, amount_msat: p.amount })),
    });
    return [
      `INSERT INTO payments (id, payment_hash, payment_preimage, destination, amount_msat, amount_sent_msat, status, created_at, completed_at, label, bolt11, description) VALUES (${v}, X'${hash}', X'${preimage}', X'${destination}', ${amount}, ${amount + fee}, 'complete', ${timestamp - 1500}, ${timestamp}, 'invoice-${v}', '${bolt11}', 'Order #${v}: 2x single-origin coffee beans (250 g), 1x burr grinder, standard shipping')`,
      `INSERT INTO ledger (id, account, amount, memo) VALUES (${v}, ${from}, ${-(amount + fee)}, 'payment ${v} to ${destination.slice(0, 16)}')`,
      `UPDATE accounts SET balance = balance - ${amount + fee}, updated_at = ${timestamp} WHERE id = ${from}`,
      `UPDATE accounts SET balance = balance + ${amount}, updated_at = ${timestamp} WHERE id = ${to}`,
      `INSERT INTO events (id, kind, created_at, payload) VALUES (${v}, 'sendpay_success', ${timestamp}, '${event}')`,
      `INSERT INTO htlcs (payment_id, part, channel_id, short_channel_id, amount_msat, cltv_expiry, state) VALUES ${parts
        .map((p) => `(${v}, ${p.part}, X'${p.channel}', '${p.scid}', ${p.amount}, ${p.cltv}, 'SENT_REMOVE_ACK_REVOCATION')`)
        .join(", ")}`,
    ];
  },
};

const SHAPES: readonly Shape[] = [LEDGER, PAYMENT];

/** A fixed timestamp base, so that the stored bytes do not depend on the clock. */
const T0 = 1_767_225_600_000;

// ------------------------------------------------------------ helpers

/**
 * Opens one new backup per variant under `dir`, with the shape's schema as version 1.
 * `groupCommit` only moves the write and fdatasync to the thread pool (the stored bytes are
 * the same); the fill for the restores uses it to write the variants at once.
 */
async function openAll(dir: string, keyring: Keyring, shape: Shape, groupCommit = false): Promise<Backend[]> {
  const out: Backend[] = [];
  for (const variant of VARIANTS) {
    const b = await openBackend(path.join(dir, slug(variant.name)), { mode: "create", groupCommit, ...variant.options(keyring) });
    await applyChange(b, { version: 1, timestamp: T0, transaction: shape.create });
    out.push(b);
  }
  return out;
}

const slug = (s: string) => s.replace(/[^a-z0-9]+/gi, "-").toLowerCase();

/** The variants in the order of round `r`: rotated by one every round. */
const rotated = (r: number) => VARIANTS.map((_, i) => (i + r) % VARIANTS.length);

const median = (xs: readonly number[]) => percentile(xs, 50);

function megabytes(n: number): string {
  return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)} MB`;
}

// ------------------------------------------------------------ ack latency

async function ackLatency(root: string, keyring: Keyring, rows: Row[]): Promise<void> {
  for (const shape of SHAPES) {
    const backends = await openAll(path.join(root, `ack-${shape.name}`), keyring, shape);
    const samples: number[][] = VARIANTS.map(() => []);
    for (let r = 0; r < ACK_WARMUP + ACK_ROUNDS; r++) {
      const v = r + 2;
      const timestamp = T0 + v;
      const transaction = shape.transaction(v, timestamp);
      for (const i of rotated(r)) {
        const t = await timed(() => applyChange(backends[i]!, { version: v, timestamp, transaction }));
        if (r >= ACK_WARMUP) samples[i]!.push(t);
      }
    }
    for (const b of backends) await b.close();
    for (const p of [50, 99]) {
      const base = percentile(samples[0]!, p);
      VARIANTS.forEach((variant, i) => {
        if (i === 0) return;
        const a = percentile(samples[i]!, p);
        const extra = a - base;
        rows.push({
          target: `ack p${p}, ${shape.name}: ${variant.name}`,
          measured: ms(a),
          limit: `${ms(base)} none`,
          ratio: a / base,
          goal: `report (extra ${extra < 0 ? "-" : "+"}${ms(Math.abs(extra))})`,
          ok: true,
        });
      });
    }
  }
}

// ------------------------------------------------------------ restore and bytes stored

async function restoreAndBytes(root: string, keyring: Keyring, rows: Row[], changes: number): Promise<void> {
  const restoreRows: Row[] = [];
  const byteRows: Row[] = [];
  for (const shape of SHAPES) {
    const dir = path.join(root, `restore-${shape.name}`);
    const backends = await openAll(dir, keyring, shape, true);
    // Filling is not measured; every variant receives the very same changes, all at once.
    const fillMs = await timed(async () => {
      for (let v = 2; v <= changes; v++) {
        const timestamp = T0 + v;
        const transaction = shape.transaction(v, timestamp);
        await Promise.all(backends.map((b) => applyChange(b, { version: v, timestamp, transaction })));
      }
    });

    const times: number[][] = VARIANTS.map(() => []);
    const statements = VARIANTS.map(() => -1);
    for (let r = 0; r < RESTORE_ROUNDS; r++) {
      for (const i of rotated(r)) {
        const out = path.join(dir, `restored-${i}-${r}.db`);
        const t0 = performance.now();
        const result = await restore(backends[i]!, out);
        times[i]!.push(performance.now() - t0);
        fs.rmSync(out);
        if (result.version !== changes) throw new Error(`${VARIANTS[i]!.name}: restored version ${result.version}, expected ${changes}`);
        statements[i] = result.statements;
      }
    }
    if (statements.some((s) => s !== statements[0])) throw new Error(`restores disagree on the statement count: ${statements.join(", ")}`);
    const bytes: number[] = [];
    for (const b of backends) {
      bytes.push((await b.status()).bytes);
      await b.close();
    }
    fs.rmSync(dir, { recursive: true, force: true });
    process.stderr.write(
      `protection detail, restore ${shape.name}: fill ${ms(fillMs)}; median restore ${VARIANTS.map((x, i) => `${x.name} ${ms(median(times[i]!))}`).join(", ")}\n`,
    );

    const rate = (t: number) => `${Math.round(changes / (t / 1000)).toLocaleString("en-US")} changes/s`;
    const baseMs = median(times[0]!);
    const n = changes.toLocaleString("en-US");
    VARIANTS.forEach((variant, i) => {
      if (i === 0) return;
      const t = median(times[i]!);
      restoreRows.push({
        target: `restore ${n} ${shape.name}: ${variant.name}`,
        measured: rate(t),
        limit: `${rate(baseMs)} none`,
        ratio: baseMs / t,
        goal: "report",
        ok: true,
      });
      byteRows.push({
        target: `bytes stored, ${n} ${shape.name}: ${variant.name}`,
        measured: `${megabytes(bytes[i]!)} (${Math.round(bytes[i]! / changes)} B/change)`,
        limit: `${megabytes(bytes[0]!)} none (${Math.round(bytes[0]! / changes)} B/change)`,
        ratio: bytes[i]! / bytes[0]!,
        goal: "report",
        ok: true,
      });
    });
  }
  rows.push(...restoreRows, ...byteRows);
}

// ------------------------------------------------------------ sealing alone, for the detail line

/**
 * What sealing one record costs without the write: µs per encodeChangeRecord (the median of 20
 * rounds, the variants in rotated order each round), and the record's size.
 */
function sealingDetail(keyring: Keyring): string {
  const lines: string[] = [];
  const codecs = VARIANTS.map((variant) => makeCodec(variant.options(keyring)));
  for (const shape of SHAPES) {
    const changes = Array.from({ length: 500 }, (_, k) => ({ version: k + 2, timestamp: T0 + k + 2, transaction: shape.transaction(k + 2, T0 + k + 2) }));
    const perRound: number[][] = VARIANTS.map(() => []);
    const sizes = VARIANTS.map(() => 0);
    for (let r = 0; r < 22; r++) {
      for (const i of rotated(r)) {
        let size = 0;
        const t0 = performance.now();
        for (const c of changes) size += encodeChangeRecord(c, codecs[i]!).length;
        if (r >= 2) perRound[i]!.push(((performance.now() - t0) * 1000) / changes.length); // 2 rounds of warm-up
        sizes[i] = size / changes.length;
      }
    }
    const cells = VARIANTS.map((variant, i) => `${variant.name} ${median(perRound[i]!).toFixed(1)} µs ${Math.round(sizes[i]!)} B`);
    lines.push(`protection detail, encode one ${shape.name} record: ${cells.join("; ")}\n`);
  }
  return lines.join("");
}

/** Runs every protection benchmark into `rows`; `changes` is how many changes each restore replays. */
export async function benchProtection(root: string, rows: Row[], changes: number): Promise<void> {
  fs.mkdirSync(root, { recursive: true });
  const keyFile = path.join(root, "key-1");
  fs.writeFileSync(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
  const keyring = Keyring.load([{ id: 1, source: `file:${keyFile}` }]);
  process.stderr.write(sealingDetail(keyring));
  await ackLatency(root, keyring, rows);
  await restoreAndBytes(root, keyring, rows, changes);
}
