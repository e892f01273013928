/**
 * The backup's two small documents, the same on every backend: `tidemark.json` (identity and
 * settings) and `generations.json` (the older generations retention keeps).
 *
 * Each is pretty-printed JSON whose last member is `"crc32"`: the CRC-32 of the document's
 * bytes with that member taken out (docs/format.md). A document that fails its checksum, or
 * holds a key this version does not know, is damage: an error naming it, never a different
 * setting. Backups written before the checksum (format version 1, file backend only) are read
 * as they are, and their first writer rewrites both documents with it.
 *
 * The schemas are checked by the few lines below rather than by zod: these three fixed shapes
 * are read by every command that opens a backup, and loading zod costs a process about as much
 * CPU as starting Node itself (issue 13: `tidemark status` within 2.5× `node -e 0`). The
 * daemon's configuration, large and written by people, keeps zod (src/daemon/config.ts).
 */
import { crc32 } from "../format/crc32.js";
import { COMPRESSION_NAMES } from "../format/sealing.js";
import { CorruptError, TidemarkError } from "../util/errors.js";
import type { BackupSettings } from "./settings.js";
import type { Storage } from "./storage.js";

/** The identity format this code writes. */
export const IDENTITY_FORMAT = "tidemark";
export const IDENTITY_VERSION = 2;

const TRAILER_RE = /,\n {2}"crc32": "([0-9a-f]{8})"\n\}\n$/;

/** What is wrong with a value: where (the path of keys) and what, or the keys no schema knows. */
interface Issue {
  readonly path: readonly string[];
  readonly message: string;
  readonly unknownKeys?: readonly string[];
}

/** Checks a value at `path`: undefined when it is valid. */
type Check = (value: unknown, path: readonly string[]) => Issue | undefined;

const got = (value: unknown) => `, got ${JSON.stringify(value)?.slice(0, 40) ?? String(value)}`;
const expected = (ok: (v: unknown) => boolean, what: string): Check => (v, path) => (ok(v) ? undefined : { path, message: `expected ${what}${got(v)}` });
const wholeNumber = (min: number, max = Number.MAX_SAFE_INTEGER): Check =>
  expected((v) => Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max, `a whole number ${max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`}`);
const isString = expected((v) => typeof v === "string", "a string");
const literal = (x: unknown): Check => expected((v) => v === x, JSON.stringify(x));
const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** An object holding only the keys of `shape`; those not in `required` may be left out. */
function strictObject(shape: Record<string, Check>, required: readonly string[] = []): Check {
  return (v, path) => {
    if (!isPlainObject(v)) return { path, message: `expected an object${got(v)}` };
    const unknownKeys = Object.keys(v).filter((k) => !Object.hasOwn(shape, k));
    if (unknownKeys.length > 0) return { path, message: "unknown keys", unknownKeys };
    for (const [key, check] of Object.entries(shape)) {
      if (v[key] === undefined) {
        if (required.includes(key)) return { path: [...path, key], message: "required" };
        continue;
      }
      const issue = check(v[key], [...path, key]);
      if (issue) return issue;
    }
    return undefined;
  };
}

const retentionSchema = strictObject({
  bases: wholeNumber(0),
  // Not necessarily whole: tidemark 0.1 wrote 0.7d as 60479999.99999999.
  maxAgeMs: expected((v) => typeof v === "number" && v >= 0, "a number >= 0"),
});

const settingsShape: Record<string, Check> = {
  created: isString,
  compression: expected((v) => (COMPRESSION_NAMES as readonly unknown[]).includes(v), `one of ${COMPRESSION_NAMES.join(", ")}`),
  brotliQuality: wholeNumber(0, 11),
  encrypted: expected((v) => typeof v === "boolean", "true or false"),
  retention: retentionSchema,
  capture: literal(true),
  keys: (v, path) => {
    if (!isPlainObject(v)) return { path, message: `expected an object${got(v)}` };
    for (const [id, fingerprint] of Object.entries(v)) {
      if (!/^\d+$/.test(id)) return { path: [...path, id], message: "expected a key id of digits" };
      if (typeof fingerprint !== "string" || !/^[0-9a-f]{16}$/.test(fingerprint)) return { path: [...path, id], message: `expected 16 hex digits${got(fingerprint)}` };
    }
    return undefined;
  },
};

const identitySchema = strictObject(
  {
    format: literal(IDENTITY_FORMAT),
    formatVersion: literal(IDENTITY_VERSION),
    ...settingsShape,
    /** Set while `tidemark copy` fills the backup: until it is gone, this is not a backup. */
    incomplete: isString,
  },
  ["format", "formatVersion", "created"],
);

/** Format version 1 of the file backend: the same settings, no checksum. */
const legacyFileIdentitySchema = strictObject({ format: literal("tidemark-file"), formatVersion: literal(1), ...settingsShape }, ["format", "formatVersion", "created"]);

const manifestSchema = strictObject(
  {
    retained: (v, path) => {
      if (!Array.isArray(v)) return { path, message: `expected an array${got(v)}` };
      const check = wholeNumber(1);
      for (const [i, x] of v.entries()) {
        const issue = check(x, [...path, String(i)]);
        if (issue) return issue;
      }
      return undefined;
    },
  },
  ["retained"],
);

/** The shape `tidemark.json` holds once its schema has passed. */
type IdentityDocument = Identity & { format: string; formatVersion: number };

/** What `tidemark.json` says. */
export interface Identity extends BackupSettings {
  readonly created: string;
  /** Set while a copy fills the backup; see identitySchema. */
  readonly incomplete?: string;
  /** Written before documents had checksums: the first writer rewrites them. */
  readonly legacy?: boolean;
}

/** Encodes a document: pretty JSON, the crc32 member last. */
export function encodeDocument(doc: object): Buffer {
  const body = JSON.stringify(doc, null, 2);
  const sum = crc32(Buffer.from(body, "utf8")).toString(16).padStart(8, "0");
  return Buffer.from(`${body.slice(0, -2)},\n  "crc32": "${sum}"\n}\n`, "utf8");
}

/**
 * Decodes a document and checks its checksum. Returns the parsed JSON, or with `legacy` the
 * parsed JSON of a document written without a checksum (the caller then checks its schema).
 */
function decodeDocument(bytes: Buffer, where: string, allowLegacy: boolean): { value: unknown; legacy: boolean } {
  const text = bytes.toString("utf8");
  const m = TRAILER_RE.exec(text);
  if (!m) {
    if (allowLegacy) {
      try {
        return { value: JSON.parse(text), legacy: true };
      } catch {
        // reported below
      }
    }
    throw new CorruptError(where, "document does not parse, or has lost its checksum", {}, { hint: DOCUMENT_HINT });
  }
  const body = `${text.slice(0, m.index)}\n}`;
  const sum = crc32(Buffer.from(body, "utf8"));
  if (sum !== parseInt(m[1]!, 16)) {
    throw new CorruptError(where, `document fails its checksum (crc32 ${sum.toString(16).padStart(8, "0")}, stored ${m[1]})`, {}, { hint: DOCUMENT_HINT });
  }
  try {
    return { value: JSON.parse(body), legacy: false };
  } catch {
    throw new CorruptError(where, "document passes its checksum but does not parse", {}, { hint: DOCUMENT_HINT });
  }
}

const DOCUMENT_HINT = "do not edit it by hand; put back the document from a copy of the backup (the log and snapshots are untouched)";

function schemaError(where: string, issue: Issue): CorruptError {
  const field = issue.path.join(".");
  if (issue.unknownKeys) {
    const keys = issue.unknownKeys.map((k) => JSON.stringify(field ? `${field}.${k}` : k)).join(", ");
    return new CorruptError(where, `unknown key ${keys}: not a setting this tidemark knows, so the document is not trusted`, {}, { hint: DOCUMENT_HINT });
  }
  return new CorruptError(where, `${field || "the document"}: ${issue.message}`, {}, { hint: DOCUMENT_HINT });
}

/** Reads `tidemark.json`'s bytes. */
export function decodeIdentity(bytes: Buffer, where: string): Identity {
  const { value, legacy } = decodeDocument(bytes, where, true);
  const format = (value as { format?: unknown } | null)?.format;
  if (typeof value !== "object" || value === null || (format !== IDENTITY_FORMAT && format !== "tidemark-file")) {
    if (format === "tidemark-s3") {
      throw new TidemarkError("E_CORRUPT", `${where}: this S3 backup was written by tidemark 0.1, whose S3 layout this version does not read`, {
        hint: "with tidemark 0.1, `tidemark copy` it to a directory; this version reads that copy and can copy it back to S3 (docs/format.md, \"Older backups\")",
      });
    }
    throw new CorruptError(where, `not a tidemark backup (format ${JSON.stringify(format)})`, {}, { hint: DOCUMENT_HINT });
  }
  const version = (value as { formatVersion?: unknown }).formatVersion;
  if (typeof version === "number" && version > IDENTITY_VERSION) {
    throw new CorruptError(where, `backup format version ${version} is not supported`, {}, { hint: "upgrade tidemark" });
  }
  const issue = (legacy ? legacyFileIdentitySchema : identitySchema)(value, []);
  if (issue) throw schemaError(where, issue);
  const { format: _f, formatVersion: _v, ...settings } = value as IdentityDocument;
  return legacy ? { ...settings, legacy: true } : settings;
}

/** Encodes `tidemark.json`. */
export function encodeIdentity(identity: Identity): Buffer {
  const { legacy: _legacy, ...rest } = identity;
  return encodeDocument({ format: IDENTITY_FORMAT, formatVersion: IDENTITY_VERSION, ...rest });
}

/** Reads `generations.json`: the ids of the older generations kept. */
export function decodeManifest(bytes: Buffer, where: string, legacy: boolean): number[] {
  const { value } = decodeDocument(bytes, where, legacy);
  const issue = manifestSchema(value, []);
  if (issue) throw schemaError(where, issue);
  return (value as { retained: number[] }).retained;
}

/** Encodes `generations.json`. */
export function encodeManifest(retained: readonly number[]): Buffer {
  return encodeDocument({ retained: [...retained] });
}

/**
 * Reads a backup's identity from `storage`: E_NO_BACKUP when there is none, E_INCOMPLETE for
 * what an interrupted copy left (unless `allowIncomplete`), E_CORRUPT when it is damaged.
 */
export async function readIdentity(storage: Storage, allowIncomplete: boolean): Promise<Identity> {
  const bytes = await storage.readDocument("tidemark.json");
  if (!bytes) {
    throw new TidemarkError("E_NO_BACKUP", `no backup at ${storage.location} (tidemark.json not found)`, {
      hint: `create one with: tidemark init ${storage.location}`,
    });
  }
  const identity = decodeIdentity(bytes, `${storage.location}/tidemark.json`);
  if (identity.incomplete !== undefined && !allowIncomplete) {
    throw new TidemarkError("E_INCOMPLETE", `${storage.location} is not a backup: it is an interrupted ${identity.incomplete}`, {
      hint: `finish it with: tidemark copy --force <source> ${storage.location}`,
    });
  }
  return identity;
}

/** Writes `tidemark.json` to `storage`. */
export function writeIdentity(storage: Storage, identity: Identity): Promise<void> {
  return storage.writeDocument("tidemark.json", encodeIdentity(identity));
}

/** Writes `generations.json` to `storage`: the ids of the older generations kept. */
export function writeManifest(storage: Storage, retained: readonly number[]): Promise<void> {
  return storage.writeDocument("generations.json", encodeManifest(retained));
}

/**
 * Reads the ids of the kept older generations from `storage`. Only "not found" means none: any
 * other failure throws, so that history is never deleted because a read failed.
 */
export async function readManifest(storage: Storage, legacy: boolean): Promise<number[]> {
  const bytes = await storage.readDocument("generations.json");
  return bytes ? decodeManifest(bytes, `${storage.location}/generations.json`, legacy) : [];
}
