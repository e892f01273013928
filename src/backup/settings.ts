/**
 * A backup's settings: how its writers seal records (compression) and whether it is encrypted.
 * They are kept in the backup's identity (tidemark.json), so that every writer of a backup
 * compresses the same way by default and none writes in the clear into an encrypted backup.
 */
import type { BackendOptions, ChangeToStore } from "./backup.js";
import { makeCodec, requireCompression, type Codec, type CompressionName } from "../format/sealing.js";
import { TidemarkError } from "../util/errors.js";
import { DEFAULT_RETENTION, type RetentionPolicy } from "../model/retention.js";

/** What an identity records. */
export interface BackupSettings {
  readonly compression?: CompressionName;
  readonly brotliQuality?: number;
  /** True once anything was written with a key: every later writer needs one. */
  readonly encrypted?: boolean;
  /** How much history compaction keeps. */
  readonly retention?: RetentionPolicy;
  /** True for a captured backup (`tidemark watch`): it holds pages, never SQL. Fixed at creation. */
  readonly capture?: boolean;
  /** Key id → the fingerprint of the key that wrote under that id (see Keyring.fingerprint). */
  readonly keys?: Readonly<Record<string, string>>;
}

/** The settings `status` shows (what a copy carries over): everything but the key fingerprints. */
export function shownSettings(settings: BackupSettings): Omit<BackupSettings, "keys"> {
  return {
    ...(settings.compression !== undefined && { compression: settings.compression }),
    ...(settings.brotliQuality !== undefined && { brotliQuality: settings.brotliQuality }),
    encrypted: settings.encrypted === true,
    ...(settings.retention !== undefined && { retention: settings.retention }),
    ...(settings.capture && { capture: true }),
  };
}

/**
 * Refuses a change of the other kind: a captured backup takes only captured pages, a
 * write-ahead backup only SQL. Mixed, neither a replay nor a page copy could restore it.
 */
export function checkMode(settings: BackupSettings, change: ChangeToStore, location: string): void {
  if (settings.capture && change.transaction) {
    throw new TidemarkError("E_MODE", `${location} is a captured backup (tidemark watch): it takes no SQL changes`, {
      hint: "give a host that reports its transactions its own backup (tidemark init), or let tidemark watch capture the database",
    });
  }
  if (!settings.capture && change.captured) {
    throw new TidemarkError("E_MODE", `${location} is a write-ahead backup: it takes no captured pages`, {
      hint: "tidemark watch needs a backup of its own: give it a new location, and it creates one",
    });
  }
}

/** The settings a new backup is created with, from the options it is created with. */
export function initialSettings(options: BackendOptions): BackupSettings {
  return {
    compression: options.compression ?? "none",
    ...(options.brotliQuality !== undefined && { brotliQuality: options.brotliQuality }),
    encrypted: options.keyring?.active !== null && options.keyring?.active !== undefined,
    ...(options.retention && { retention: options.retention }),
    ...(options.capture && { capture: true }),
    ...(options.keyring?.active && { keys: { [options.keyring.active.id]: options.keyring.fingerprint(options.keyring.active.id)! } }),
  };
}

/**
 * The codec a backend uses: the options' compression, else the backup's; the options' keys.
 * A writer of an encrypted backup must have an active key, and every key given must be the one
 * the backup knows under its id, so that a wrong key is refused before it writes anything.
 */
export function codecFor(settings: BackupSettings, options: BackendOptions, location: string): Codec {
  const writer = options.mode !== "read";
  if (writer && settings.encrypted && !options.keyring?.active) {
    throw new TidemarkError("E_KEY", `${location} is encrypted: writing to it needs a key`, {
      hint: "pass the current key with --key ID=file:PATH (or env:NAME), or set encryption.keys in the daemon config",
    });
  }
  const confirmed: number[] = [];
  for (const id of options.keyring?.ids ?? []) {
    const known = settings.keys?.[id];
    const given = options.keyring!.fingerprint(id);
    if (known === given) confirmed.push(id);
    if (known !== undefined && known !== given) {
      throw new TidemarkError("E_KEY", `key id ${id} is not the key ${location} was written with under that id (fingerprint ${given}, the backup expects ${known})`, {
        hint: `check the file or variable that key id ${id} comes from; a new key needs a new id`,
      });
    }
  }
  const compression = options.compression ?? settings.compression;
  // A writer is refused at open, not at its first write; a reader needs zstd only for the
  // records that use it.
  if (writer && compression !== undefined) requireCompression(compression);
  return makeCodec({
    ...(compression !== undefined && { compression }),
    ...((options.brotliQuality ?? settings.brotliQuality) !== undefined && { brotliQuality: (options.brotliQuality ?? settings.brotliQuality)! }),
    ...(options.keyring && { keyring: options.keyring.confirming(confirmed) }),
  });
}

/** The retention a writer applies: the options' when given, else the backup's own, else 24 hours. */
export function retentionFor(settings: BackupSettings, options: BackendOptions): RetentionPolicy {
  return options.retention ?? settings.retention ?? DEFAULT_RETENTION;
}

/**
 * The settings a writer must record, or null when they stand: the backup becomes encrypted the
 * first time a key writes to it, the fingerprint of each key that writes is kept under its id,
 * and a retention given by a writer becomes the backup's own, so that a later writer without
 * one does not prune what it asked to keep.
 */
export function updatedSettings<T extends BackupSettings>(settings: T, codec: Codec, options: BackendOptions): T | null {
  if (options.mode === "read") return null;
  const active = codec.keyring.active;
  const encrypt = !settings.encrypted && active !== null;
  const newKey = active !== null && settings.keys?.[active.id] === undefined;
  const retain = options.retention !== undefined && JSON.stringify(options.retention) !== JSON.stringify(settings.retention ?? {});
  if (!encrypt && !newKey && !retain) return null;
  return {
    ...settings,
    ...(encrypt && { encrypted: true }),
    ...(newKey && { keys: { ...settings.keys, [active.id]: codec.keyring.fingerprint(active.id)! } }),
    ...(retain && { retention: options.retention }),
  };
}
