/**
 * A backup's settings: how its writers seal records (compression) and whether it is encrypted.
 * They are kept in the backup's identity (tidemark.json), so that every writer of a backup
 * compresses the same way by default and none writes in the clear into an encrypted backup.
 */
import type { BackendOptions } from "./backend.js";
import { makeCodec, type Codec, type CompressionName } from "./envelope.js";
import { TidemarkError } from "./errors.js";
import type { RetentionPolicy } from "./retention.js";

/** What an identity records. */
export interface BackupSettings {
  readonly compression?: CompressionName;
  readonly brotliQuality?: number;
  /** True once anything was written with a key: every later writer needs one. */
  readonly encrypted?: boolean;
  /** How much history compaction keeps. */
  readonly retention?: RetentionPolicy;
}

/** The settings a new backup is created with, from the options it is created with. */
export function initialSettings(options: BackendOptions): BackupSettings {
  return {
    compression: options.compression ?? "none",
    ...(options.brotliQuality !== undefined && { brotliQuality: options.brotliQuality }),
    encrypted: options.keyring?.active !== null && options.keyring?.active !== undefined,
    ...(options.retention && { retention: options.retention }),
  };
}

/**
 * The codec a backend uses: the options' compression, else the backup's; the options' keys.
 * A writer of an encrypted backup must have an active key.
 */
export function codecFor(settings: BackupSettings, options: BackendOptions, location: string): Codec {
  const writer = options.mode !== "read";
  if (writer && settings.encrypted && !options.keyring?.active) {
    throw new TidemarkError("E_KEY", `${location} is encrypted: writing to it needs a key`, {
      hint: "pass the current key with --key ID=file:PATH (or env:NAME), or set encryption.keys in the daemon config",
    });
  }
  return makeCodec({
    ...((options.compression ?? settings.compression) !== undefined && { compression: (options.compression ?? settings.compression)! }),
    ...((options.brotliQuality ?? settings.brotliQuality) !== undefined && { brotliQuality: (options.brotliQuality ?? settings.brotliQuality)! }),
    ...(options.keyring && { keyring: options.keyring }),
  });
}

/** The retention a writer applies: the options' when given, else the backup's own (none). */
export function retentionFor(settings: BackupSettings, options: BackendOptions): RetentionPolicy {
  return options.retention ?? settings.retention ?? {};
}

/**
 * The settings a writer must record, or null when they stand: the backup becomes encrypted the
 * first time a key writes to it, and a retention given by a writer becomes the backup's own, so
 * that a later writer without one does not prune what it asked to keep.
 */
export function updatedSettings<T extends BackupSettings>(settings: T, codec: Codec, options: BackendOptions): T | null {
  if (options.mode === "read") return null;
  const encrypt = !settings.encrypted && codec.keyring.active !== null;
  const retain = options.retention !== undefined && JSON.stringify(options.retention) !== JSON.stringify(settings.retention ?? {});
  if (!encrypt && !retain) return null;
  return { ...settings, ...(encrypt && { encrypted: true }), ...(retain && { retention: options.retention }) };
}
