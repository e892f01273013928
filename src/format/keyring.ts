/**
 * Encryption keys: AES-256 keys known by a numeric id, read from files or environment
 * variables (never from a URL or a config file's own text).
 *
 * One key is active: new records and snapshots are encrypted with it. The others are
 * decrypt-only, so that old records stay readable after a rotation.
 *
 * A key source is written `ID=file:PATH` or `ID=env:NAME`; the key itself is 32 bytes, given
 * as 64 hex digits, as base64, or as the 32 raw bytes of a file (`openssl rand -hex 32`).
 */
import { createHmac } from "node:crypto";
import fs from "node:fs";
import { ConfigError, TidemarkError } from "../util/errors.js";

/** Bytes of an AES-256 key. */
export const KEY_BYTES = 32;

/** Where one key comes from. */
export interface KeySource {
  /** The id recorded in every record the key encrypts: 1 to 2^32-1. */
  readonly id: number;
  /** `file:PATH` or `env:NAME`. */
  readonly source: string;
  /** Only for reading what older keys wrote. */
  readonly decryptOnly?: boolean;
}

/** The keys a backend may use. */
export class Keyring {
  readonly #keys = new Map<number, Buffer>();
  readonly #active: number | null;
  /** Ids whose key the backup being read recorded (their fingerprints match). */
  readonly #confirmed: ReadonlySet<number>;

  private constructor(keys: Map<number, Buffer>, active: number | null, confirmed: ReadonlySet<number> = new Set()) {
    this.#keys = keys;
    this.#active = active;
    this.#confirmed = confirmed;
  }

  /**
   * This keyring, knowing that the keys under `ids` are the ones a backup was written with
   * (their fingerprints match its record): a record such a key cannot open was damaged or
   * tampered with, not sealed with another key.
   */
  confirming(ids: Iterable<number>): Keyring {
    return new Keyring(this.#keys, this.#active, new Set([...this.#confirmed, ...ids]));
  }

  /** Whether the key under `id` is known to be the one the backup was written with. */
  isConfirmed(id: number): boolean {
    return this.#confirmed.has(id);
  }

  /** A keyring with no keys: records are written in the clear, and encrypted ones cannot be read. */
  static empty(): Keyring {
    return new Keyring(new Map(), null);
  }

  /** Loads keys from their sources; `where` names the setting in errors. Secrets never appear in errors. */
  static load(sources: readonly KeySource[], where = "keys", env: NodeJS.ProcessEnv = process.env): Keyring {
    const keys = new Map<number, Buffer>();
    const active = sources.filter((s) => !s.decryptOnly);
    if (active.length > 1) throw new ConfigError(where, `only one key may be active (for writing); mark the others decrypt-only`);
    sources.forEach((s, i) => {
      const at = `${where}[${i}]`;
      if (!Number.isInteger(s.id) || s.id < 1 || s.id > 0xffffffff) throw new ConfigError(`${at}.id`, `expected an integer from 1 to 4294967295, got ${s.id}`);
      if (keys.has(s.id)) throw new ConfigError(`${at}.id`, `key id ${s.id} is given twice`);
      keys.set(s.id, readKey(s.source, at, env));
    });
    return new Keyring(keys, active[0]?.id ?? null);
  }

  /** The key new writes use, or null to write in the clear. */
  get active(): { id: number; key: Buffer } | null {
    return this.#active === null ? null : { id: this.#active, key: this.#keys.get(this.#active)! };
  }

  /** True when the keyring holds any key. */
  get size(): number {
    return this.#keys.size;
  }

  /** The key with `id`, or throws E_KEY naming it and saying how to pass it. */
  get(id: number, what: string): Buffer {
    const key = this.#keys.get(id);
    if (!key) {
      throw new TidemarkError("E_KEY", `${what} is encrypted with key id ${id}, which was not given`, {
        hint: `pass it: --decrypt-key ${id}=file:PATH (or env:NAME); in the daemon config, under encryption.keys`,
      });
    }
    return key;
  }

  /** The ids of every key held. */
  get ids(): number[] {
    return [...this.#keys.keys()];
  }

  /**
   * A one-way fingerprint of a key, safe to log and to store in a backup's identity: the first
   * 16 hex digits of HMAC-SHA256(key, "tidemark key check"). It tells a wrong key from the right
   * one before anything is written with it, and tells nothing about the key or the data.
   */
  fingerprint(id: number): string | undefined {
    const key = this.#keys.get(id);
    return key && createHmac("sha256", key).update("tidemark key check").digest("hex").slice(0, 16);
  }
}

/** Parses `ID=file:PATH` or `ID=env:NAME` (a CLI flag's value). */
export function parseKeySpec(spec: string, decryptOnly: boolean): KeySource {
  const m = /^(\d+)=((?:file|env):.+)$/.exec(spec);
  if (!m) {
    throw new ConfigError("--key", `expected ID=file:PATH or ID=env:NAME, got ${JSON.stringify(spec.replace(/=.*/, "=…"))}`, {
      hint: "for example --key 2=file:/etc/tidemark/key-2",
    });
  }
  return { id: Number(m[1]), source: m[2]!, decryptOnly };
}

function readKey(source: string, at: string, env: NodeJS.ProcessEnv): Buffer {
  let raw: Buffer;
  if (source.startsWith("file:")) {
    const file = source.slice("file:".length);
    try {
      raw = fs.readFileSync(file);
    } catch (err) {
      throw new ConfigError(`${at}.source`, `cannot read key file ${file}: ${(err as NodeJS.ErrnoException).code ?? "error"}`);
    }
  } else if (source.startsWith("env:")) {
    const name = source.slice("env:".length);
    const value = env[name];
    if (value === undefined || value === "") throw new ConfigError(`${at}.source`, `environment variable ${name} is not set`);
    raw = Buffer.from(value, "utf8");
  } else {
    throw new ConfigError(`${at}.source`, "expected file:PATH or env:NAME; a key never goes in the configuration itself");
  }
  const key = decodeKey(raw);
  if (!key) {
    throw new ConfigError(`${at}.source`, `the key from ${source.split(":")[0]}: is not 32 bytes (64 hex digits, base64, or 32 raw bytes)`, {
      hint: "make one with: openssl rand -hex 32",
    });
  }
  return key;
}

function decodeKey(raw: Buffer): Buffer | null {
  if (raw.length === KEY_BYTES) return raw;
  const text = raw.toString("utf8").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) return Buffer.from(text, "base64");
  return null;
}
