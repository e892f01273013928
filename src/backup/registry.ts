/**
 * Finds the backend for a location by its URL scheme, and opens it.
 *
 * - A bare path (`./backup`, `/var/lib/tidemark/db`) or `file:PATH` / `file:///PATH` is the file backend.
 * - `s3://bucket/prefix?…` is the S3 backend.
 * - Any other scheme `foo:` loads the npm package `tidemark-backend-foo`, which must export
 *   `createStorage` (a {@link StorageFactory}, written against `tidemark/backend-kit`). It is
 *   looked up from the current directory first, then from tidemark's own install.
 *
 * The backend found only stores bytes; the backup on top of it is the core's, the same for all.
 */
import path from "node:path";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import type { Backend, BackendOptions } from "./backup.js";
import type { Storage, StorageFactory, StorageOptions } from "./storage.js";
import { openStoredBackup } from "./stored-backup.js";
import { TidemarkError, UsageError } from "../util/errors.js";
import { silentLogger } from "../util/logger.js";

type FactoryLoader = () => Promise<StorageFactory>;

const builtins = new Map<string, FactoryLoader>([
  ["file:", async () => (await import("../../backends/file.js")).createStorage],
  ["s3:", async () => (await import("../../backends/s3.js")).createStorage],
]);

/** Registers a backend (a storage factory) for a scheme (such as `"mem:"`) in this process. */
export function registerBackend(scheme: string, factory: StorageFactory): void {
  const key = scheme.endsWith(":") ? scheme : `${scheme}:`;
  builtins.set(key, async () => factory);
}

/** Turns a location (bare path or URL) into a URL. */
export function parseLocation(location: string): URL {
  if (location === "") throw new UsageError("the backup location is empty", { hint: "give a directory path or a URL such as s3://bucket/prefix" });
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]+):/.exec(location);
  if (!scheme) return pathToFileURL(path.resolve(location));
  if (scheme[1]!.toLowerCase() === "file" && !location.startsWith("file://")) {
    return pathToFileURL(path.resolve(location.slice("file:".length)));
  }
  try {
    return new URL(location);
  } catch {
    throw new UsageError(`"${schemeOf(location)}…" is not a valid URL`, { hint: "give a directory path or a URL such as s3://bucket/prefix" });
  }
}

/**
 * Checks a location without opening it: that it parses, that its backend is installed, and
 * (for s3://) that its parameters are valid. For `daemon --check`.
 */
export async function checkLocation(location: string): Promise<void> {
  const url = parseLocation(location);
  if (url.protocol === "s3:") (await import("../../backends/s3.js")).parseS3Url(url);
  else await loadFactory(url.protocol);
}

/** The backend (the storage alone) for `location`: for tools that look beneath the backup. */
export async function openStorage(location: string, options: StorageOptions): Promise<Storage> {
  const url = parseLocation(location);
  return (await loadFactory(url.protocol))(url, options);
}

/** Opens the backup at `location`, through the backend its scheme names. */
export async function openBackend(location: string, options: BackendOptions): Promise<Backend> {
  const storage = await openStorage(location, {
    writable: options.mode !== "read",
    log: options.log ?? silentLogger,
    ...(options.groupCommit !== undefined && { groupCommit: options.groupCommit }),
    ...(options.onRetry && { onRetry: options.onRetry }),
  });
  return openStoredBackup(storage, options);
}

/** Opens the backend at `location` for writing, creating the backup if there is none yet. */
export async function openOrCreateBackend(location: string, options: Omit<BackendOptions, "mode">): Promise<{ backend: Backend; created: boolean }> {
  try {
    return { backend: await openBackend(location, { ...options, mode: "write" }), created: false };
  } catch (err) {
    if (!(err instanceof TidemarkError && err.code === "E_NO_BACKUP")) throw err;
    return { backend: await openBackend(location, { ...options, mode: "create" }), created: true };
  }
}

async function loadFactory(protocol: string): Promise<StorageFactory> {
  const builtin = builtins.get(protocol);
  if (builtin) return builtin();
  const scheme = protocol.slice(0, -1);
  const pkg = `tidemark-backend-${scheme}`;
  let mod: { createStorage?: unknown };
  try {
    mod = await importFromCwdOrSelf(pkg);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") {
      throw new TidemarkError("E_BACKEND", `no backend for "${scheme}:" URLs (package ${pkg} is not installed)`, {
        hint: `use a path, file:, or s3://; or install the third-party package: npm install ${pkg}`,
        cause: err,
      });
    }
    throw new TidemarkError("E_BACKEND", `backend package ${pkg} failed to load: ${(err as Error).message}`, { cause: err });
  }
  if (typeof mod.createStorage !== "function") {
    throw new TidemarkError("E_BACKEND", `backend package ${pkg} does not export a createStorage function`, {
      hint: "a backend module exports `createStorage(url, options)` from the tidemark/backend-kit contract (docs/architecture.md)",
    });
  }
  return mod.createStorage as StorageFactory;
}

async function importFromCwdOrSelf(pkg: string): Promise<{ createStorage?: unknown }> {
  let resolved: string | undefined;
  try {
    resolved = createRequire(path.join(process.cwd(), "package.json")).resolve(pkg);
  } catch {
    // not installed next to the user's project; try tidemark's own dependencies
  }
  return resolved ? import(pathToFileURL(resolved).href) : import(pkg);
}

function schemeOf(location: string): string {
  return location.slice(0, location.indexOf(":") + 1);
}
