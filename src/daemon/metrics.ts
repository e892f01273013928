/**
 * Prometheus metrics, via prom-client. Every name of tidemark's own starts with `tidemark_`, and
 * each has help text. Latencies are histograms. Node's default metrics keep their standard names
 * (`process_cpu_seconds_total`, `nodejs_heap_size_used_bytes`, …), so stock dashboards match.
 * Every labelled counter has its series at 0 from the moment a database is known, so that
 * `increase(…) > 0` fires on the first error rather than on the second.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { ERROR_CODES } from "../util/errors.js";
import { PACKAGE_VERSION } from "../util/package-version.js";

/** The label values each labelled counter is initialised with. */
const ACTIONS = ["append", "rewind-then-append", "new-base", "unchanged"];
const COMPACTION_RESULTS = ["ok", "skipped", "error"];
const VERIFY_RESULTS = ["ok", "failed"];
const RETRY_OPS = ["get", "put", "list", "delete", "upload snapshot"];

/** The daemon's metrics, on a registry of their own. */
export class Metrics {
  readonly registry = new Registry();

  readonly ackLatency = new Histogram({
    name: "tidemark_ack_latency_seconds",
    help: "Time from receiving a change to acknowledging it as durable.",
    labelNames: ["db"] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });

  readonly changes = new Counter({
    name: "tidemark_changes_total",
    help: "Changes made durable, by what the version rules decided.",
    labelNames: ["db", "action"] as const,
    registers: [this.registry],
  });

  readonly bytesWritten = new Counter({
    name: "tidemark_bytes_written_total",
    help: "Bytes of changes and snapshots received and made durable.",
    labelNames: ["db"] as const,
    registers: [this.registry],
  });

  readonly headVersion = new Gauge({
    name: "tidemark_head_version",
    help: "Version of the newest change in the backup.",
    labelNames: ["db"] as const,
    registers: [this.registry],
  });

  readonly backupBytes = new Gauge({
    name: "tidemark_backup_bytes",
    help: "Bytes the backup occupies in storage.",
    labelNames: ["db"] as const,
    registers: [this.registry],
  });

  readonly compactions = new Counter({
    name: "tidemark_compactions_total",
    help: "Compactions, by result (ok, skipped, error).",
    labelNames: ["db", "result"] as const,
    registers: [this.registry],
  });

  readonly compactionDuration = new Histogram({
    name: "tidemark_compaction_duration_seconds",
    help: "How long compactions take, replay to install.",
    labelNames: ["db"] as const,
    buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1800],
    registers: [this.registry],
  });

  readonly compactionFailures = new Gauge({
    name: "tidemark_compaction_consecutive_failures",
    help: "Compactions that failed in a row; 0 after a success. Scheduled ones back off meanwhile.",
    labelNames: ["db"] as const,
    registers: [this.registry],
  });

  readonly compactionRetryAt = new Gauge({
    name: "tidemark_compaction_next_attempt_timestamp_seconds",
    help: "When a scheduled compaction is next tried after failures (Unix time); 0 when nothing failed.",
    labelNames: ["db"] as const,
    registers: [this.registry],
  });

  readonly verifications = new Counter({
    name: "tidemark_verify_total",
    help: "Verify runs (with a test restore), by result (ok, failed).",
    labelNames: ["db", "result"] as const,
    registers: [this.registry],
  });

  readonly verifyDuration = new Histogram({
    name: "tidemark_verify_duration_seconds",
    help: "How long verify runs take, test restore included.",
    labelNames: ["db"] as const,
    buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1800],
    registers: [this.registry],
  });

  readonly lastVerifyOk = new Gauge({
    name: "tidemark_verify_last_success_timestamp_seconds",
    help: "When verify last passed (Unix time).",
    labelNames: ["db"] as const,
    registers: [this.registry],
  });

  readonly replicaLagVersions = new Gauge({
    name: "tidemark_replica_lag_versions",
    help: "Versions a replica is behind its primary.",
    labelNames: ["db", "replica"] as const,
    registers: [this.registry],
  });

  readonly replicaLagSeconds = new Gauge({
    name: "tidemark_replica_lag_seconds",
    help: "How much older a replica's head is than its primary's.",
    labelNames: ["db", "replica"] as const,
    registers: [this.registry],
  });

  readonly backendRetries = new Counter({
    name: "tidemark_backend_retries_total",
    help: "Requests to a backend retried after a transient failure, by operation.",
    labelNames: ["db", "op"] as const,
    registers: [this.registry],
  });

  readonly databaseUp = new Gauge({
    name: "tidemark_database_up",
    help: "1 while the database is served; 0 when it failed to open (see /healthz for why).",
    labelNames: ["db"] as const,
    registers: [this.registry],
  });

  readonly errors = new Counter({
    name: "tidemark_errors_total",
    help: "Errors, by code (see docs/operations.md).",
    labelNames: ["db", "code"] as const,
    registers: [this.registry],
  });

  readonly buildInfo = new Gauge({
    name: "tidemark_build_info",
    help: "Always 1; its labels say which tidemark (and Node.js) is running.",
    labelNames: ["version", "node"] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    this.buildInfo.set({ version: PACKAGE_VERSION, node: process.version }, 1);
  }

  /** Creates every counter series of a database at 0, for each label value it can take. */
  addDatabase(db: string): void {
    for (const action of ACTIONS) this.changes.inc({ db, action }, 0);
    for (const result of COMPACTION_RESULTS) this.compactions.inc({ db, result }, 0);
    for (const result of VERIFY_RESULTS) this.verifications.inc({ db, result }, 0);
    for (const op of RETRY_OPS) this.backendRetries.inc({ db, op }, 0);
    for (const code of Object.keys(ERROR_CODES)) this.errors.inc({ db, code }, 0);
    this.bytesWritten.inc({ db }, 0);
    this.compactionFailures.set({ db }, 0);
    this.compactionRetryAt.set({ db }, 0);
  }

  /** Forgets the series of a database that is no longer served. */
  removeDatabase(db: string, replicas: readonly string[] = []): void {
    for (const replica of replicas) {
      this.replicaLagVersions.remove({ db, replica });
      this.replicaLagSeconds.remove({ db, replica });
    }
    for (const op of RETRY_OPS) this.backendRetries.remove({ db, op });
    for (const m of [this.ackLatency, this.bytesWritten, this.headVersion, this.backupBytes, this.compactionDuration, this.compactionFailures, this.compactionRetryAt, this.verifyDuration, this.lastVerifyOk, this.databaseUp]) m.remove({ db });
    for (const result of VERIFY_RESULTS) this.verifications.remove({ db, result });
    for (const action of ACTIONS) this.changes.remove({ db, action });
    for (const result of COMPACTION_RESULTS) this.compactions.remove({ db, result });
    for (const code of Object.keys(ERROR_CODES)) this.errors.remove({ db, code });
  }
}
