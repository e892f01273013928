/**
 * The JSON wire form of a change (DESIGN.md), with validation that names the exact field.
 *
 * `{"version": 7, "timestamp": 1700000000000, "transaction": ["SQL", {"sql": "…", "params": […]}]}`
 * A parameter is a JSON number, string or null, `{"$blob": "<base64>"}` or `{"$bigint": "<decimal>"}`.
 * Named parameters are a JSON object instead of an array.
 */
import { createRequire } from "node:module";
import type { ChangeInput, Param, SnapshotSource, Statement } from "./change.js";
import { InputError } from "../util/errors.js";

type LosslessParse = typeof import("lossless-json").parse;
let losslessParse: LosslessParse | undefined;
/**
 * lossless-json's parse, loaded the first time a change needs it (its single-file CommonJS build):
 * most changes hold only plain numbers, and its ES modules cost every process ~5 ms to load.
 */
function parseKeepingNumbers(...args: Parameters<LosslessParse>): ReturnType<LosslessParse> {
  losslessParse ??= (createRequire(import.meta.url)("lossless-json") as typeof import("lossless-json")).parse;
  return losslessParse(...args);
}

/** A change parsed from JSON; the snapshot, if any, is a path the caller opens. */
export interface WireChange {
  readonly version: number;
  readonly timestamp?: number;
  readonly transaction?: Statement[];
  readonly snapshotPath?: string;
  /** `"continuation": true`: the change continues the head version (ChangeInput.continuation). */
  readonly continuation?: true;
}

/** Options for {@link parseWireChange}. */
export interface WireOptions {
  /** Accept `"snapshot_path"` (the CLI's ingest does; HTTP does not). */
  readonly allowSnapshotPath?: boolean;
  /** The hint given with "invalid JSON", for the way the caller receives changes. */
  readonly jsonHint?: string;
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const DECIMAL = /^-?(?:0|[1-9][0-9]*)$/;
const PARAM_KINDS = 'a number, string, null, {"$blob": "<base64>"} or {"$bigint": "<decimal>"}';

/** Parses and validates one JSON change. Throws InputError with the field path on bad input. */
export function parseWireChange(text: string, options: WireOptions = {}): WireChange {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InputError(`invalid JSON: ${(err as Error).message}`, {
      hint: options.jsonHint ?? 'send one JSON object per change, like {"version":1,"transaction":["CREATE TABLE t(x)"]}',
    });
  }
  // JSON.parse reads `2e0` as 2, `1e400` as Infinity and 2^60 + 1 as 2^60: where the text has
  // such a number, it is read again keeping each number's text, and checked as written.
  if (!plainNumbersOnly(text)) value = exactNumbers(parseKeepingNumbers(text, null, (raw) => new RawNumber(raw)), "");
  return wireChange(value, options);
}

/** A JSON number as written, from the lossless parse. */
class RawNumber {
  constructor(readonly text: string) {}
}

const INTEGER_TEXT = /^-?(?:0|[1-9][0-9]*)$/;

/**
 * Turns the numbers of a lossless parse into JavaScript numbers, refusing what a number cannot
 * carry: `version` and `timestamp` must be written as integers (no fraction or exponent) up to
 * 2^53 - 1; any number must be finite; an integer beyond 2^53 - 1 must be sent as `$bigint`.
 */
function exactNumbers(v: unknown, path: string): unknown {
  if (v instanceof RawNumber) return exactNumber(v.text, path);
  if (Array.isArray(v)) return v.map((x, i) => exactNumbers(x, `${path}[${i}]`));
  if (isPlainObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, exactNumbers(x, path === "" ? k : `${path}.${k}`)]));
  return v;
}

function exactNumber(text: string, path: string): number {
  const n = Number(text);
  const integer = INTEGER_TEXT.test(text);
  if (path === "version" || path === "timestamp") {
    if (!integer) throw bad(path, `expected an integer written without a fraction or exponent, got ${text}`);
    if (!Number.isSafeInteger(n)) {
      throw new InputError(`change.${path}: ${text} is larger than ${Number.MAX_SAFE_INTEGER} (2^53 - 1), the largest ${path} tidemark carries exactly`, {
        hint: path === "version" ? "a host's data version counts its transactions: keep it below 2^53" : "send milliseconds since the epoch, or an ISO-8601 string",
      });
    }
    return n;
  }
  if (!Number.isFinite(n)) throw bad(path, `${text} is not a finite number`);
  if (integer && !Number.isSafeInteger(n)) {
    throw new InputError(`change.${path}: the integer ${text} does not fit in a JSON number exactly (it would be stored as ${n})`.replace(".[", "["), {
      hint: `send it as {"$bigint": "${text}"}`,
    });
  }
  return n;
}

/**
 * Whether every number outside the strings of JSON `text` is an integer of at most 15 digits
 * written plainly, which JSON.parse reads exactly. A quick scan, so that the common change
 * is parsed once.
 */
function plainNumbersOnly(text: string): boolean {
  for (let at = 0; at < text.length; ) {
    const quote = text.indexOf('"', at);
    if (SUSPECT_NUMBER.test(text.slice(at, quote < 0 ? text.length : quote))) return false;
    if (quote < 0) return true;
    // Skip the string: its closing quote is the first one not escaped by an odd run of backslashes.
    let end = quote;
    for (;;) {
      end = text.indexOf('"', end + 1);
      if (end < 0) return true;
      let slashes = 0;
      while (text.charCodeAt(end - 1 - slashes) === 92) slashes++;
      if (slashes % 2 === 0) break;
    }
    at = end + 1;
  }
  return true;
}

const SUSPECT_NUMBER = /[0-9][.eE]|[0-9]{16}/;

/**
 * Turns a validated wire change into the change that applyChange takes. `openSnapshot` opens a
 * `"snapshot_path"`; callers that do not allow one leave it out.
 */
export function changeFromWire(wire: WireChange, openSnapshot?: (file: string) => SnapshotSource): ChangeInput {
  // Only reachable with a WireChange built by hand: wireChange refuses the field without allowSnapshotPath.
  if (wire.snapshotPath !== undefined && !openSnapshot) throw bad("snapshot_path", "unknown field; expected one of version, timestamp, transaction, continuation");
  return {
    version: wire.version,
    ...(wire.timestamp !== undefined && { timestamp: wire.timestamp }),
    ...(wire.transaction && { transaction: wire.transaction }),
    ...(wire.snapshotPath !== undefined && { snapshot: openSnapshot!(wire.snapshotPath) }),
    ...(wire.continuation && { continuation: true }),
  };
}

/** Validates an already-parsed JSON value as a change. */
export function wireChange(value: unknown, options: WireOptions = {}): WireChange {
  if (!isPlainObject(value)) throw bad("", `expected a JSON object, got ${describe(value)}`);
  const allowed = options.allowSnapshotPath
    ? ["version", "timestamp", "transaction", "continuation", "snapshot_path"]
    : ["version", "timestamp", "transaction", "continuation"];
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw bad(key, `unknown field; expected one of ${allowed.join(", ")}`);
  }
  const version = value.version;
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) {
    throw bad("version", `expected an integer >= 1, got ${describe(version)}`);
  }
  const change: { -readonly [K in keyof WireChange]: WireChange[K] } = { version };
  if (value.timestamp !== undefined) change.timestamp = parseTimestamp(value.timestamp);
  if (value.transaction !== undefined) {
    if (!Array.isArray(value.transaction)) {
      throw bad("transaction", `expected an array of statements, got ${describe(value.transaction)}`);
    }
    change.transaction = value.transaction.map((st, i) => wireStatement(st, `transaction[${i}]`));
  }
  if (value.snapshot_path !== undefined) {
    if (typeof value.snapshot_path !== "string" || value.snapshot_path === "") {
      throw bad("snapshot_path", `expected a file path, got ${describe(value.snapshot_path)}`);
    }
    change.snapshotPath = value.snapshot_path;
  }
  if (value.continuation !== undefined) {
    if (typeof value.continuation !== "boolean") throw bad("continuation", `expected true or false, got ${describe(value.continuation)}`);
    if (value.continuation) {
      if (change.snapshotPath !== undefined) throw bad("continuation", "a continuation carries a transaction only, not a snapshot");
      change.continuation = true;
    }
  }
  if (change.transaction === undefined && change.snapshotPath === undefined) {
    throw bad(
      "",
      options.allowSnapshotPath
        ? 'a change needs "transaction" or "snapshot_path"'
        : 'a change needs "transaction" (send snapshots to the snapshot endpoint)',
    );
  }
  return change;
}

function parseTimestamp(v: unknown): number {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return v;
  if (typeof v === "string") {
    const ms = Date.parse(v);
    if (!Number.isNaN(ms) && /^\d{4}-\d{2}-\d{2}/.test(v)) return ms;
  }
  throw bad("timestamp", `expected milliseconds since the epoch or an ISO-8601 string, got ${describe(v)}`);
}

function wireStatement(st: unknown, path: string): Statement {
  if (typeof st === "string") return st;
  if (!isPlainObject(st)) throw bad(path, `expected SQL text or {"sql", "params"}, got ${describe(st)}`);
  for (const key of Object.keys(st)) {
    if (key !== "sql" && key !== "params") throw bad(`${path}.${key}`, 'unknown field; expected "sql" or "params"');
  }
  if (typeof st.sql !== "string") throw bad(`${path}.sql`, `expected SQL text, got ${describe(st.sql)}`);
  if (st.params === undefined) return { sql: st.sql };
  if (Array.isArray(st.params)) {
    return { sql: st.sql, params: st.params.map((p, j) => wireParam(p, `${path}.params[${j}]`)) };
  }
  if (isPlainObject(st.params)) {
    const params: Record<string, Param> = {};
    for (const [name, p] of Object.entries(st.params)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
        throw bad(`${path}.params.${name}`, "a named parameter is a name without its @, : or $ prefix");
      }
      params[name] = wireParam(p, `${path}.params.${name}`);
    }
    return { sql: st.sql, params };
  }
  throw bad(`${path}.params`, `expected an array or an object of parameters, got ${describe(st.params)}`);
}

function wireParam(p: unknown, path: string): Param {
  if (p === null || typeof p === "string") return p;
  if (typeof p === "number") {
    if (!Number.isFinite(p)) throw bad(path, `${p} is not a finite number`);
    return p;
  }
  if (isPlainObject(p)) {
    const keys = Object.keys(p);
    if (keys.length === 1 && keys[0] === "$blob") {
      const b64 = p.$blob;
      if (typeof b64 !== "string" || !BASE64.test(b64)) throw bad(`${path}.$blob`, "expected standard base64 with padding");
      return Buffer.from(b64, "base64");
    }
    if (keys.length === 1 && keys[0] === "$bigint") {
      const dec = p.$bigint;
      if (typeof dec !== "string" || !DECIMAL.test(dec)) {
        throw bad(`${path}.$bigint`, `expected a decimal integer as a string, got ${describe(dec)}`);
      }
      const n = BigInt(dec);
      if (n < INT64_MIN || n > INT64_MAX) throw bad(`${path}.$bigint`, `${dec} does not fit in a signed 64-bit integer`);
      return n;
    }
  }
  throw bad(path, `expected ${PARAM_KINDS}, got ${describe(p)}`);
}

/** Converts statements to their JSON wire form (the inverse of parsing). */
export function statementsToWire(statements: readonly Statement[]): unknown[] {
  return statements.map((st) => {
    if (typeof st === "string" || st.params === undefined) return typeof st === "string" ? st : { sql: st.sql };
    const params = Array.isArray(st.params)
      ? st.params.map(paramToWire)
      : Object.fromEntries(Object.entries(st.params).map(([k, v]) => [k, paramToWire(v as Param)]));
    return { sql: st.sql, params };
  });
}

/** Whether two transactions are the same statements with the same parameters (compared through their wire form, which spells bigints and blobs out). */
export function sameStatements(a: readonly Statement[] | undefined, b: readonly Statement[] | undefined): boolean {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  return JSON.stringify(statementsToWire(a)) === JSON.stringify(statementsToWire(b));
}

function paramToWire(p: Param): unknown {
  if (typeof p === "bigint") return { $bigint: p.toString() };
  if (p instanceof Uint8Array) return { $blob: Buffer.from(p.buffer, p.byteOffset, p.byteLength).toString("base64") };
  return p;
}

function bad(path: string, what: string): InputError {
  return new InputError(path === "" ? `change: ${what}` : `change.${path}: ${what}`.replace(".[", "["), {
    hint: 'see README "Change format" for the JSON wire form',
  });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  if (typeof v === "object") return "an object";
  if (typeof v === "number") return `the number ${v}`;
  return String(v);
}
