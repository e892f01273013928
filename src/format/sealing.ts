/**
 * How a payload is protected at rest: compressed (gzip, brotli at an explicit quality, or zstd),
 * then encrypted with AES-256-GCM. Records and snapshot frames both go through here, so a backup
 * can mix codecs freely: each stored piece says how it was sealed.
 */
import { createCipheriv, createDecipheriv } from "node:crypto";
import { createRequire } from "node:module";
import zlib from "node:zlib";
import { TidemarkError } from "../util/errors.js";
import { Keyring } from "./keyring.js";

/** The compression byte stored with every record and snapshot. */
export const Compression = { none: 0, gzip: 1, brotli: 2, zstd: 3 } as const;
export type CompressionName = keyof typeof Compression;
/** The names, for option and config validation. */
export const COMPRESSION_NAMES = Object.keys(Compression) as [CompressionName, ...CompressionName[]];

/** zstd's level: its own default, the balance of speed and size it is tuned for. */
export const ZSTD_LEVEL = 3;

interface Zstd {
  compress(data: Buffer, params?: { compressionLevel?: number }): Buffer;
  decompress(data: Buffer): Buffer;
}
let zstdModule: Zstd | null | undefined;

/**
 * The zstd binding (the optional dependency zstd-napi, compiled at install; Node 20's zlib has
 * no zstd). Throws E_CONFIG, with what to do, when it did not install.
 */
function zstd(): Zstd {
  if (zstdModule === undefined) {
    try {
      zstdModule = createRequire(import.meta.url)("zstd-napi") as Zstd;
    } catch {
      zstdModule = null;
    }
  }
  if (zstdModule === null) {
    throw new TidemarkError("E_CONFIG", "zstd is not available: the optional package zstd-napi is not installed (it compiles from source at install)", {
      hint: "reinstall with a C++ toolchain present (npm ci), or use --compression brotli or gzip; records already written with zstd need it to be read",
    });
  }
  return zstdModule;
}

/** Bytes of a GCM nonce and tag. */
export const IV_BYTES = 12;
export const TAG_BYTES = 16;

/** How a writer seals what it stores, and the keys a reader may need. */
export interface Codec {
  readonly compression: CompressionName;
  /** Brotli quality, 0 to 11; 1 unless set (11, brotli's default, runs at about 1 MB/s). */
  readonly brotliQuality: number;
  readonly keyring: Keyring;
}

/** No compression, no encryption. */
export const PLAIN: Codec = Object.freeze({ compression: "none", brotliQuality: 1, keyring: Keyring.empty() });

/** Throws E_CONFIG, with what to do, when `compression` needs a package that did not install. */
export function requireCompression(compression: CompressionName): void {
  if (compression === "zstd") zstd();
}

/** Builds a codec; the defaults are no compression, brotli quality 1, no keys. */
export function makeCodec(options: { compression?: CompressionName; brotliQuality?: number; keyring?: Keyring } = {}): Codec {
  const quality = options.brotliQuality ?? 1;
  if (!Number.isInteger(quality) || quality < 0 || quality > 11) throw new TidemarkError("E_CONFIG", `brotli quality must be 0..11, got ${quality}`);
  return Object.freeze({ compression: options.compression ?? "none", brotliQuality: quality, keyring: options.keyring ?? Keyring.empty() });
}

/** Compresses with the codec's algorithm (which must not be "none"), whatever the result's size. */
export function compressWith(plain: Buffer, codec: Codec): Buffer {
  if (codec.compression === "gzip") return zlib.gzipSync(plain);
  if (codec.compression === "zstd") return zstd().compress(plain, { compressionLevel: ZSTD_LEVEL });
  return zlib.brotliCompressSync(plain, {
    params: {
      [zlib.constants.BROTLI_PARAM_QUALITY]: codec.brotliQuality,
      [zlib.constants.BROTLI_PARAM_SIZE_HINT]: plain.length,
    },
  });
}

/** Compresses with the codec's algorithm; returns the algorithm actually used (none when it did not help). */
export function compress(plain: Buffer, codec: Codec): { algo: number; bytes: Buffer } {
  if (codec.compression === "none") return { algo: Compression.none, bytes: plain };
  const bytes = compressWith(plain, codec);
  return bytes.length < plain.length ? { algo: Compression[codec.compression], bytes } : { algo: Compression.none, bytes: plain };
}

/** Decompresses; damage raises what `fail` makes of it. */
export function decompress(bytes: Buffer, algo: number, fail: (what: string) => never): Buffer {
  const binding = algo === Compression.zstd ? zstd() : null;
  try {
    switch (algo) {
      case Compression.none:
        return bytes;
      case Compression.gzip:
        return zlib.gunzipSync(bytes);
      case Compression.brotli:
        return zlib.brotliDecompressSync(bytes);
      case Compression.zstd:
        return binding!.decompress(bytes);
    }
  } catch (err) {
    return fail(`cannot decompress (${(err as Error).message})`);
  }
  return fail(`unknown compression ${algo}`);
}

/** AES-256-GCM: returns ciphertext followed by the 16-byte tag. */
export function encrypt(plain: Buffer, key: Buffer, iv: Buffer, aad: Buffer): Buffer {
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(aad);
  return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
}

/**
 * Opens what encrypt() sealed. Callers check the stored bytes' CRC first, so a failure here
 * means the key is wrong (E_KEY, naming the key id), unless the keyring knows the key is the
 * backup's own: then the bytes were altered after they were checksummed (E_CORRUPT).
 */
export function decrypt(sealed: Buffer, key: Buffer, iv: Buffer, aad: Buffer, keyId: number, keyring: Keyring, what: string): Buffer {
  if (sealed.length < TAG_BYTES) throw new TidemarkError("E_CORRUPT", `${what}: encrypted payload is shorter than its tag`);
  const d = createDecipheriv("aes-256-gcm", key, iv);
  d.setAAD(aad);
  d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  try {
    return Buffer.concat([d.update(sealed.subarray(0, sealed.length - TAG_BYTES)), d.final()]);
  } catch {
    if (keyring.isConfirmed(keyId)) {
      throw new TidemarkError("E_CORRUPT", `${what}: fails authentication under key id ${keyId}, which is the key this backup was written with (its fingerprint matches): the bytes were damaged or tampered with`, {
        hint: "run tidemark verify for a full report; restore from a replica or an older copy",
      });
    }
    throw new TidemarkError("E_KEY", `${what}: key id ${keyId} does not decrypt it (fingerprint ${keyring.fingerprint(keyId)}): the wrong key was given for that id`, {
      hint: `give the key that was used as id ${keyId}; the bytes are intact (their checksum matches), so the key is what differs`,
    });
  }
}
