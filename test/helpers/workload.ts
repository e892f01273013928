/**
 * Random but valid SQL workloads for round-trip tests: DDL, inserts, updates and deletes, with
 * NULLs, unicode, quotes, newlines, 64-bit integers and blobs, as SQL text and with parameters.
 * A seeded generator keeps every failure reproducible.
 */
import type { Param, Statement } from "../../src/model/change.js";

/** A small seeded PRNG (mulberry32). */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(this.next() * 256);
    return b;
  }
}

const AWKWARD_STRINGS = [
  "",
  "plain",
  "it's quoted",
  'double "quotes"',
  "line\nbreak\r\nand tab\t",
  "unicode: héllo wörld — 日本語 — 🚀🔥",
  "backslash \\ and percent %",
  "NUL-free but long ".repeat(40),
  "'; DROP TABLE t0; --",
  "\u2028\u2029 separators",
];

const BIG_INTS = [0n, 1n, -1n, 9007199254740993n, 9223372036854775807n, -9223372036854775808n, 4294967296n];
const REALS = [0.5, -1.25, 3.141592653589793, 1e300, -2.5e-300, 42];

interface Table {
  name: string;
  columns: string[];
  nextId: number;
}

/** Generates transactions that are valid when applied in order to an empty database. */
export class Workload {
  readonly #rng: Rng;
  readonly #tables: Table[] = [];
  #tableSeq = 0;
  #indexSeq = 0;

  constructor(seed: number) {
    this.#rng = new Rng(seed);
  }

  /** The next transaction: 1 to `max` statements. */
  transaction(max = 6): Statement[] {
    const out: Statement[] = [];
    const n = this.#rng.int(1, max);
    for (let i = 0; i < n; i++) out.push(this.#statement());
    return out;
  }

  #statement(): Statement {
    const r = this.#rng;
    if (this.#tables.length === 0 || (this.#tables.length < 4 && r.chance(0.04))) return this.#createTable();
    const t = r.pick(this.#tables);
    const roll = r.next();
    if (roll < 0.45) return this.#insert(t);
    if (roll < 0.65) return this.#update(t);
    if (roll < 0.78) return this.#delete(t);
    if (roll < 0.8 && t.columns.length < 8) {
      const col = `c${t.columns.length}_${r.int(0, 999)}`;
      t.columns.push(col);
      return `ALTER TABLE ${t.name} ADD COLUMN ${col} ${r.pick(["TEXT", "BLOB", "", "NUMERIC"])}`;
    }
    if (roll < 0.82) return `CREATE INDEX IF NOT EXISTS ix${this.#indexSeq++} ON ${t.name}(${r.pick(t.columns)})`;
    if (roll < 0.83 && this.#tables.length > 1) {
      this.#tables.splice(this.#tables.indexOf(t), 1);
      return `DROP TABLE ${t.name}`;
    }
    return this.#insert(t);
  }

  #createTable(): string {
    const name = `t${this.#tableSeq++}`;
    const columns = ["a", "b", "c", "d"];
    this.#tables.push({ name, columns, nextId: 1 });
    return `CREATE TABLE ${name} (\n  id INTEGER PRIMARY KEY,\n  a TEXT,\n  b INTEGER,\n  c BLOB,\n  d\n)`;
  }

  #insert(t: Table): Statement {
    const r = this.#rng;
    const id = t.nextId++;
    const cols = t.columns;
    if (r.chance(0.5)) {
      const values = cols.map(() => this.#literal());
      return `INSERT INTO ${t.name} (id, ${cols.join(", ")}) VALUES (${id}, ${values.join(", ")})`;
    }
    if (r.chance(0.5)) {
      const params: Param[] = [id, ...cols.map(() => this.#param())];
      return { sql: `INSERT INTO ${t.name} (id, ${cols.join(", ")}) VALUES (${params.map(() => "?").join(", ")})`, params };
    }
    const params: Record<string, Param> = { id: BigInt(id) };
    cols.forEach((c) => (params[c] = this.#param()));
    return {
      sql: `INSERT INTO ${t.name} (id, ${cols.join(", ")}) VALUES (@id, ${cols.map((c) => `@${c}`).join(", ")})`,
      params,
    };
  }

  #update(t: Table): Statement {
    const r = this.#rng;
    const col = r.pick(t.columns);
    const id = r.int(1, Math.max(1, t.nextId - 1));
    if (r.chance(0.5)) return `UPDATE ${t.name} SET ${col} = ${this.#literal()} WHERE id = ${id}`;
    return { sql: `UPDATE ${t.name} SET ${col} = ? WHERE id >= ? AND id < ?`, params: [this.#param(), id, id + r.int(1, 5)] };
  }

  #delete(t: Table): Statement {
    const r = this.#rng;
    const id = r.int(1, Math.max(1, t.nextId - 1));
    if (r.chance(0.5)) return `DELETE FROM ${t.name} WHERE id = ${id}`;
    return { sql: `DELETE FROM ${t.name} WHERE id % ? = ?`, params: [BigInt(r.int(5, 40)), BigInt(r.int(0, 4))] };
  }

  #literal(): string {
    const r = this.#rng;
    switch (r.int(0, 5)) {
      case 0:
        return "NULL";
      case 1:
        return `'${r.pick(AWKWARD_STRINGS).replace(/'/g, "''")}'`;
      case 2:
        return r.pick(BIG_INTS).toString();
      case 3:
        return String(r.pick(REALS));
      case 4:
        return `X'${r.bytes(r.int(0, 64)).toString("hex")}'`;
      default:
        return String(r.int(-1000, 1000));
    }
  }

  #param(): Param {
    const r = this.#rng;
    switch (r.int(0, 5)) {
      case 0:
        return null;
      case 1:
        return r.pick(AWKWARD_STRINGS);
      case 2:
        return r.pick(BIG_INTS);
      case 3:
        return r.pick(REALS);
      case 4:
        return r.bytes(r.int(0, r.chance(0.1) ? 70_000 : 200));
      default:
        return r.int(-1000, 1000);
    }
  }
}
