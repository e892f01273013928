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
  BackendHead,
  BackendOptions,
  BackendStatus,
  ChangeRange,
  ChangeToStore,
  CompactionBase,
  OpenMode,
  SyncBackend,
} from "./backup/backup.js";
export { isSyncBackend } from "./backup/backup.js";
export type { ChangeInput, Param, Params, SnapshotSource, Statement, StoredChange, StoredSnapshot } from "./model/change.js";
export { openBackend, parseLocation, registerBackend } from "./backup/registry.js";
export { applyChange, applyChangeSync, type IngestOptions, type IngestResult } from "./ops/ingest.js";
export { decide, reconcile, type Action, type Reconciliation } from "./model/version-rules.js";
export { restore, type RestoreOptions, type RestoreResult } from "./ops/restore.js";
export { compact, type CompactOptions, type CompactionStats } from "./ops/compaction.js";
export { copyBackup, type CopyOptions, type CopyResult } from "./ops/copy.js";
export { verify, type VerifyOptions, type VerifyProblem, type VerifyReport } from "./ops/verify.js";
export { CORE_LIGHTNING_RULES, RULE_SETS, Rewriter, loadRules, type Rule } from "./ops/rewrite.js";
export { parseWireChange, statementsToWire, wireChange, type WireChange } from "./model/change-json.js";
export { silentLogger, terminalLogger, daemonLogger, type Logger } from "./util/logger.js";
export { connect, type ConnectOptions, type DaemonClient, type SnapshotUpload } from "./host/client.js";
export { Journal, backendSink, VERSION_TABLE, type ChangeSink, type SyncChangeSink, type JournalTransaction, type JournalOptions } from "./host/journal.js";
export { checkDeterministic } from "./model/determinism.js";
export { Daemon } from "./daemon/daemon.js";
export { loadConfigFile, defaultConfig, buildConfig, type Config, type DatabaseConfig, type CompactionPolicy } from "./daemon/config.js";
export { compactionDue, nextCompactionAt, type CompactionState } from "./model/compaction-policy.js";
export * from "./util/errors.js";
