/**
 * `tidemark/backend-kit`: what a backend author needs, and all a backend may import.
 *
 * A backend stores bytes for the core (the {@link Storage} contract, each method's contract in
 * its JSDoc); the core seals, checks and decides. A package `tidemark-backend-foo` exports
 * `createStorage` (a {@link StorageFactory}) and serves `foo:` URLs.
 * `test/helpers/backend-conformance.ts` is the suite a backend must pass.
 */
export type {
  BlobListing,
  BlobReader,
  DocumentName,
  GenerationListing,
  LogChunk,
  StagedGeneration,
  Storage,
  StorageFactory,
  StorageOptions,
  WriterInfo,
  WriterLock,
} from "./backup/storage.js";
export { vanished } from "./backup/storage.js";
export { BackendError, CorruptError, TidemarkError, UsageError, asBackendError } from "./util/errors.js";
export type { Logger } from "./util/logger.js";
export { Mutex } from "./util/mutex.js";
export { isProcessAlive } from "./util/pid.js";
export { backoffDelay } from "./util/backoff.js";
export { parseDuration } from "./util/duration.js";
export { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, TMP_SUFFIX, fsyncDir, fsyncDirAsync, readAll, writeAll, writeFileDurably, writeFileDurablyAsync } from "./util/durable-fs.js";
