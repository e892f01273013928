/**
 * tidemark as a library: open a backend, feed it changes under the version rules, restore,
 * compact and verify.
 *
 * @example
 * ```ts
 * import { openBackend, applyChange, restore } from "tidemark";
 * const backup = await openBackend("./backup", { mode: "write" });
 * await applyChange(backup, { version: 1, transaction: ["CREATE TABLE t (x)"] });
 * await backup.close();
 * ```
 */
export type {
  Backend,
  BackendFactory,
  BackendHead,
  BackendOptions,
  BackendStatus,
  ChangeRange,
  ChangeToStore,
  CompactionBase,
  OpenMode,
  SyncBackend,
} from "./backend.js";
export { isSyncBackend } from "./backend.js";
export type { ChangeInput, Param, Params, SnapshotSource, Statement, StoredChange, StoredSnapshot } from "./change.js";
export { openBackend, parseLocation, registerBackend } from "./backend-registry.js";
export { applyChange, applyChangeSync, type IngestResult } from "./ingest.js";
export { decide, reconcile, type Action, type Reconciliation } from "./version-rules.js";
export { restore, type RestoreOptions, type RestoreResult } from "./restore.js";
export { compact, type CompactOptions, type CompactionStats } from "./compaction.js";
export { copyBackup, type CopyOptions, type CopyResult } from "./copy.js";
export { verify, type VerifyOptions, type VerifyProblem, type VerifyReport } from "./verify.js";
export { CORE_LIGHTNING_RULES, RULE_SETS, Rewriter, loadRules, type Rule } from "./rewrite.js";
export { parseWireChange, statementsToWire, wireChange, type WireChange } from "./change-json.js";
export { silentLogger, terminalLogger, daemonLogger, type Logger } from "./logger.js";
export { connect, type ConnectOptions, type DaemonClient, type SnapshotUpload } from "./client.js";
export { Journal, backendSink, VERSION_TABLE, type ChangeSink, type SyncChangeSink, type JournalTransaction, type JournalOptions } from "./journal.js";
export { checkDeterministic } from "./determinism.js";
export { Daemon } from "./daemon.js";
export { loadConfigFile, defaultConfig, buildConfig, type Config, type DatabaseConfig, type CompactionPolicy } from "./config.js";
export { compactionDue, nextCompactionAt, type CompactionState } from "./compaction-policy.js";
export * from "./errors.js";
