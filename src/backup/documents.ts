/**
 * The backup's two small documents, the same on every backend: `tidemark.json` (identity and
 * settings) and `generations.json` (the older generations retention keeps).
 *
 * Each is pretty-printed JSON whose last member is `"crc32"`: the CRC-32 of the document's
 * bytes with that member taken out (docs/format.md). A document that fails its checksum, or
 * holds a key this version does not know, is damage: an error naming it, never a different
 * setting. Backups written before the checksum (format version 1, file backend only) are read
 * as they are, and their first writer rewrites both documents with it.
 */
import { z } from "zod";
import { crc32 } from "../format/crc32.js";
import { COMPRESSION_NAMES } from "../format/sealing.js";
import { CorruptError, TidemarkError } from "../util/errors.js";
import type { BackupSettings } from "./settings.js";
import type { Storage } from "./storage.js";

/** The identity format this code writes. */
export const IDENTITY_FORMAT = "tidemark";
export const IDENTITY_VERSION = 2;

const TRAILER_RE = /,\n {2}"crc32": "([0-9a-f]{8})"\n\}\n$/;

const retentionSchema = z.strictObject({
  bases: z.number().int().min(0).optional(),
  // Not necessarily whole: tidemark 0.1 wrote 0.7d as 60479999.99999999.
  maxAgeMs: z.number().min(0).optional(),
});

const settingsShape = {
  created: z.string(),
  compression: z.enum(COMPRESSION_NAMES).optional(),
  brotliQuality: z.number().int().min(0).max(11).optional(),
  encrypted: z.boolean().optional(),
  retention: retentionSchema.optional(),
  capture: z.literal(true).optional(),
  keys: z.record(z.string().regex(/^\d+$/), z.string().regex(/^[0-9a-f]{16}$/)).optional(),
};

const identitySchema = z.strictObject({
  format: z.literal(IDENTITY_FORMAT),
  formatVersion: z.literal(IDENTITY_VERSION),
  ...settingsShape,
  /** Set while `tidemark copy` fills the backup: until it is gone, this is not a backup. */
  incomplete: z.string().optional(),
});

/** Format version 1 of the file backend: the same settings, no checksum. */
const legacyFileIdentitySchema = z.strictObject({ format: z.literal("tidemark-file"), formatVersion: z.literal(1), ...settingsShape });

const manifestSchema = z.strictObject({ retained: z.array(z.number().int().min(1)) });

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

function schemaError(where: string, error: z.ZodError): CorruptError {
  const issue = error.issues[0]!;
  const field = issue.path.join(".");
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.map((k) => JSON.stringify(field ? `${field}.${k}` : k)).join(", ");
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
  if (legacy) {
    const parsed = legacyFileIdentitySchema.safeParse(value);
    if (!parsed.success) throw schemaError(where, parsed.error);
    const { format: _f, formatVersion: _v, ...settings } = parsed.data;
    return { ...settings, legacy: true };
  }
  const parsed = identitySchema.safeParse(value);
  if (!parsed.success) throw schemaError(where, parsed.error);
  const { format: _f, formatVersion: _v, ...settings } = parsed.data;
  return settings;
}

/** Encodes `tidemark.json`. */
export function encodeIdentity(identity: Identity): Buffer {
  const { legacy: _legacy, ...rest } = identity;
  return encodeDocument({ format: IDENTITY_FORMAT, formatVersion: IDENTITY_VERSION, ...rest });
}

/** Reads `generations.json`: the ids of the older generations kept. */
export function decodeManifest(bytes: Buffer, where: string, legacy: boolean): number[] {
  const { value } = decodeDocument(bytes, where, legacy);
  const parsed = manifestSchema.safeParse(value);
  if (!parsed.success) throw schemaError(where, parsed.error);
  return parsed.data.retained;
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
