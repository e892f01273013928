/**
 * One database the daemon serves: its primary backend, the queue that makes it the single
 * writer, its compaction scheduler, and what `status` reports about it.
 */
import type { Backend, BackendHead, BackendStatus } from "../backup/backup.js";
import { openBackend, openOrCreateBackend } from "../backup/registry.js";
import type { ChangeInput } from "../model/change.js";
import { compact, type CompactionStats } from "../ops/compaction.js";
import { compactionDue, nextCompactionAt, type CompactionState } from "../model/compaction-policy.js";
import type { DatabaseConfig } from "./config.js";
import { TidemarkError, type ErrorCode } from "../util/errors.js";
import { applyChange, closeShadow, rewindChange, sameContent, shadowOf, type IngestOptions, type IngestResult } from "../ops/ingest.js";
import type { Logger } from "../util/logger.js";
import type { Metrics } from "./metrics.js";
import { Mutex } from "../util/mutex.js";
import { restore, type RestoreResult } from "../ops/restore.js";
import { ReplicaFeeder, type ReplicaStatus } from "./replica.js";
import { Keyring } from "../format/keyring.js";
import { loadRules, type Rule } from "../ops/rewrite.js";
import { verify, type VerifyProblem, type VerifyReport } from "../ops/verify.js";
import { Capture, checkCapturable, type CaptureStatus } from "../ops/capture.js";
import { isClientAbort } from "./client-abort.js";
import { CompactionBackoff, type CompactionRetry } from "./compaction-backoff.js";

/** How often the size-ratio trigger is checked when nothing else wakes the scheduler. */
const RATIO_CHECK_MS = 60_000;
/** How soon after the open the first scheduled verify runs (or sooner, when the interval is shorter). */
const FIRST_VERIFY_MS = 5 * 60_000;
/** Errors kept for status. */
const ERRORS_KEPT = 10;

/** What the daemon shares with each database. */
export interface DatabaseDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly tmpDir?: string;
  /** Open backends with group commit (several databases flush at once). */
  readonly groupCommit?: boolean;
  /** Where the shadow databases live; the default of ops/shadow.ts otherwise. */
  readonly shadowDir?: string;
}

/** A recent error, for status. */
export interface RecentError {
  readonly at: string;
  readonly code: string;
  readonly message: string;
}

/** What `GET /v1/dbs/:db` and `tidemark status` report. */
export interface DatabaseStatus extends BackendStatus {
  readonly name: string;
  readonly backend: string;
  readonly kind: string;
  readonly compacting: boolean;
  readonly lastCompaction: {
    readonly at: string;
    readonly reason: string;
    readonly baseVersion: number;
    readonly durationMs: number;
    readonly before: { records: number; bytes: number };
    readonly after: { records: number; bytes: number };
  } | null;
  readonly errors: readonly RecentError[];
  /** Scheduled compactions after failures: how many failed in a row, and when the next may start. */
  readonly compaction: CompactionRetry;
  /** When this daemon last acknowledged a change (or rewind) for the database; null since its start. */
  readonly lastAck: string | null;
  readonly replicas: readonly ReplicaStatus[];
  /** The last verify run, with its test restore. */
  readonly lastVerify: { readonly at: string; readonly ok: boolean; readonly problems: readonly VerifyProblem[] } | null;
  /** With `watch:`: the captured database, the lag in transactions and seconds, the WAL's size. */
  readonly capture?: CaptureStatus;
}

/** A database served by the daemon. */
export class ManagedDatabase {
  readonly config: DatabaseConfig;
  readonly #backend: Backend;
  readonly #rules: Rule[];
  /** How changes are checked against the backup's shadow (ops/shadow.ts) before the ack. */
  readonly #apply: IngestOptions;
  readonly #deps: DatabaseDeps;
  readonly #log: Logger;
  readonly #queue = new Mutex();
  /** Changes queued or being stored, by version: a different one for the same version is refused (E_CONFLICT). */
  readonly #pending = new Map<number, ChangeInput[]>();
  readonly #abort = new AbortController();
  /** With `watch:`, the capture feeding the primary, and its loop. */
  #capture: Capture | null = null;
  #capturing: Promise<void> | null = null;
  readonly #errors: RecentError[] = [];
  /** Failures counted already, so that the API layer does not count them twice. */
  readonly #recorded = new WeakSet<object>();
  /** Closed, and its metrics removed: a late failure must not bring them back. */
  #gone = false;
  #changesSince = 0;
  #lastAt = Date.now();
  #lastCompaction: DatabaseStatus["lastCompaction"] = null;
  #compaction: Promise<CompactionStats> | null = null;
  /** Scheduled compactions wait out this after a failure (a request to compact does not). */
  readonly #compactionBackoff = new CompactionBackoff();
  #timer: NodeJS.Timeout | null = null;
  #closing: Promise<void> | null = null;
  readonly #replicas: ReplicaFeeder[] = [];
  #verification: Promise<VerifyReport> | null = null;
  #verifyTimer: NodeJS.Timeout | null = null;
  #lastVerify: DatabaseStatus["lastVerify"] = null;
  #lastAck: string | null = null;
  readonly #series: {
    readonly ackLatency: { observe(v: number): void };
    readonly appends: { inc(): void };
    readonly bytesWritten: { inc(v: number): void };
    readonly headVersion: { set(v: number): void };
  };

  private constructor(config: DatabaseConfig, backend: Backend, rules: Rule[], deps: DatabaseDeps) {
    this.config = config;
    this.#backend = backend;
    this.#rules = rules;
    this.#apply = { allowNondeterministic: config.allowNondeterministic, shadow: { rules, ...(deps.shadowDir !== undefined && { dir: deps.shadowDir }) } };
    this.#deps = deps;
    this.#log = deps.log.child({ db: config.name, component: "database" });
    // The label lookups are done once: these are updated on every change.
    const m = deps.metrics;
    const db = { db: config.name };
    this.#series = {
      ackLatency: m.ackLatency.labels(db),
      appends: m.changes.labels({ ...db, action: "append" }),
      bytesWritten: m.bytesWritten.labels(db),
      headVersion: m.headVersion.labels(db),
    };
  }

  /** Opens the primary backend (creating the backup if allowed and missing) and starts the scheduler. */
  static async open(config: DatabaseConfig, deps: DatabaseDeps): Promise<ManagedDatabase> {
    const rules = loadRules(config.rules);
    const log = deps.log.child({ db: config.name, component: "backend" });
    const retries = deps.metrics.backendRetries;
    const onRetry = (op: string) => retries.inc({ db: config.name, op });
    const keyring = Keyring.load(config.keys, `databases.${config.name}.encryption.keys`);
    const options = {
      log,
      groupCommit: deps.groupCommit ?? false,
      onRetry,
      keyring,
      ...(config.retention && { retention: config.retention }),
      ...(config.compression && { compression: config.compression }),
      ...(config.brotliQuality !== undefined && { brotliQuality: config.brotliQuality }),
      ...(config.watch !== undefined && { capture: true }),
    };
    // A database that cannot be captured is refused before its backup is created.
    if (config.watch !== undefined) checkCapturable(config.watch);
    let backend: Backend;
    if (config.create) {
      const opened = await openOrCreateBackend(config.backend, options);
      backend = opened.backend;
      if (opened.created) log.info({ backend: backend.location }, "created a new backup");
    } else {
      backend = await openBackend(config.backend, { ...options, mode: "write" });
    }
    const captured = (await backend.status()).settings?.capture === true;
    if (captured !== (config.watch !== undefined)) {
      await backend.close();
      throw new TidemarkError("E_MODE", config.watch !== undefined ? `${backend.location} is a write-ahead backup: databases.${config.name}.watch needs a captured backup` : `${backend.location} is a captured backup: it takes changes only from databases.${config.name}.watch`, {
        hint: config.watch !== undefined ? "give the watched database a new backend location; the daemon creates a captured backup there" : `set databases.${config.name}.watch to the database it captures`,
      });
    }
    const db = new ManagedDatabase(config, backend, rules, deps);
    if (config.watch !== undefined) {
      try {
        await db.#startCapture(config.watch);
      } catch (err) {
        await backend.close();
        throw err;
      }
    }
    for (const location of config.replicas) {
      const feeder = new ReplicaFeeder(backend, location, {
        log: deps.log.child({ db: config.name }),
        backendOptions: options,
        ...(config.replicaIntervalMs !== undefined && { intervalMs: config.replicaIntervalMs }),
        onStatus: (s) => {
          deps.metrics.replicaLagVersions.set({ db: config.name, replica: location }, s.lagVersions);
          deps.metrics.replicaLagSeconds.set({ db: config.name, replica: location }, s.lagSeconds);
        },
      });
      db.#replicas.push(feeder);
      feeder.start();
    }
    const status = await backend.status();
    db.#changesSince = Math.max(0, status.records - 1);
    db.#updateGauges(status);
    db.#schedule();
    db.#scheduleVerify(true);
    return db;
  }

  get name(): string {
    return this.config.name;
  }

  /** Captures `file` into the primary until the database closes; each stored change feeds the replicas. */
  async #startCapture(file: string): Promise<void> {
    const capture = new Capture(file, this.#backend, {
      log: this.#deps.log.child({ db: this.name }),
      onStored: () => {
        this.#series.headVersion.set(this.#backend.head().version);
        this.#changesSince++;
        for (const r of this.#replicas) r.notify();
        this.#maybeCompact();
      },
    });
    await capture.open();
    this.#capture = capture;
    this.#capturing = capture.run(this.#abort.signal).catch((err: unknown) => {
      this.#record(err);
      this.#log.error({ err }, "capture stopped");
    });
  }

  /** The backup head, from memory. */
  head(): BackendHead {
    return this.#backend.head();
  }

  /**
   * Applies the version rules and stores the change; resolves once it is durable. Changes to
   * one database are serialised; `bytes` is what the request carried, for the metrics.
   */
  ingest(change: ChangeInput, bytes: number): Promise<IngestResult> {
    const started = performance.now();
    const racing = this.#pending.get(change.version);
    if (racing?.some((other) => !sameContent(other, change))) {
      const err = new TidemarkError("E_CONFLICT", `${this.name}: a different change ${change.version} is already queued or being stored; this one was not`, {
        hint: "one writer per database: a version is redone only after its first change was acknowledged (or refused), never while it is in flight",
      });
      this.#record(err);
      return Promise.reject(err);
    }
    const pending = racing ?? [];
    pending.push(change);
    this.#pending.set(change.version, pending);
    return this.#queue.run(async () => {
      this.#checkOpen();
      try {
        const result = await applyChange(this.#backend, change, this.#apply);
        const m = this.#series;
        m.ackLatency.observe((performance.now() - started) / 1000);
        (result.action === "append" ? m.appends : this.#deps.metrics.changes.labels({ db: this.name, action: result.action })).inc();
        if (result.action !== "unchanged") m.bytesWritten.inc(bytes);
        m.headVersion.set(result.version);
        this.#lastAck = new Date().toISOString();
        this.#changesSince++;
        for (const r of this.#replicas) r.notify();
        this.#maybeCompact();
        return result;
      } catch (err) {
        // A snapshot upload the client broke off is not the database's failure.
        if (!isClientAbort(err)) this.#record(err);
        throw err;
      }
    }).finally(() => {
      pending.splice(pending.indexOf(change), 1);
      if (pending.length === 0) this.#pending.delete(change.version);
    });
  }

  /** Drops the last change. */
  rewind(): Promise<BackendHead> {
    return this.#queue.run(async () => {
      this.#checkOpen();
      try {
        await rewindChange(this.#backend);
        for (const r of this.#replicas) r.notify();
        this.#deps.metrics.headVersion.set({ db: this.name }, this.#backend.head().version);
        return this.#backend.head();
      } catch (err) {
        this.#record(err);
        throw err;
      }
    });
  }

  /** Compacts now (or joins the compaction already running). */
  compactNow(reason = "requested"): Promise<CompactionStats> {
    this.#checkOpen();
    this.#compaction ??= this.#runCompaction(reason).finally(() => {
      this.#compaction = null;
      this.#schedule();
    });
    return this.#compaction;
  }

  async #runCompaction(reason: string): Promise<CompactionStats> {
    const m = this.#deps.metrics;
    const log = this.#deps.log.child({ db: this.name, component: "compactor" });
    log.info({ reason }, "compaction starting");
    try {
      const stats = await compact(this.#backend, {
        rules: this.#rules,
        ...(this.#deps.tmpDir && { tmpDir: this.#deps.tmpDir }),
        signal: this.#abort.signal,
        shadow: shadowOf(this.#backend, this.#apply.shadow),
      });
      if (stats.skipped) {
        m.compactions.inc({ db: this.name, result: "skipped" });
        log.debug({ why: stats.skipped }, "compaction skipped");
        return stats;
      }
      this.#changesSince = Math.max(0, this.#changesSince - stats.before.records + 1);
      this.#lastAt = Date.now();
      this.#lastCompaction = {
        at: new Date().toISOString(),
        reason,
        baseVersion: stats.baseVersion,
        durationMs: Math.round(stats.durationMs),
        before: stats.before,
        after: stats.after,
      };
      for (const r of this.#replicas) r.notify();
      m.compactions.inc({ db: this.name, result: "ok" });
      this.#compactionBackoff.succeeded();
      this.#compactionGauges();
      m.compactionDuration.observe({ db: this.name }, stats.durationMs / 1000);
      this.#updateGauges(await this.#backend.status());
      log.info({ baseVersion: stats.baseVersion, ms: Math.round(stats.durationMs), before: stats.before, after: stats.after }, "compaction done");
      return stats;
    } catch (err) {
      m.compactions.inc({ db: this.name, result: "error" });
      if (!this.#abort.signal.aborted) {
        this.#record(err);
        const retryAt = this.#compactionBackoff.failed(Date.now());
        this.#compactionGauges();
        log.error({ err, failures: this.#compactionBackoff.failures, retryAt: new Date(retryAt).toISOString() }, "compaction failed; the scheduler backs off");
      }
      throw err;
    }
  }

  /** Starts a compaction in the background if the policy says one is due. */
  #maybeCompact(): void {
    if (this.#compaction || this.#closing || this.#compactionBackoff.waiting(Date.now())) return;
    const reason = compactionDue(this.config.compaction, this.#policyState(), Date.now());
    if (reason) this.compactNow(reason).catch(() => {}); // logged and recorded in #runCompaction
  }

  #policyState(status?: BackendStatus): CompactionState {
    return {
      changesSince: this.#changesSince,
      lastAt: this.#lastAt,
      logBytes: status ? status.bytes - status.snapshotBytes : 0,
      snapshotBytes: status?.snapshotBytes ?? 0,
      records: status?.records ?? this.#changesSince + 2,
    };
  }

  /** Arms the timer for the next time-based or size-based check. */
  #schedule(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#closing) return;
    const policy = this.config.compaction;
    if (policy.everyMs === undefined && policy.logRatio === undefined) return;
    const now = Date.now();
    // After a failure, not before the back-off ends (and then at once, if compaction is still due).
    const at = Math.max(nextCompactionAt(now, policy, this.#policyState()) ?? now + RATIO_CHECK_MS, this.#compactionBackoff.nextAt ?? 0);
    const delay = Math.min(Math.max(at - now, 1000), policy.logRatio !== undefined ? RATIO_CHECK_MS : 2 ** 31 - 1);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      void this.#tick();
    }, delay);
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    if (this.#compaction || this.#closing) return;
    try {
      const status = await this.#backend.status();
      this.#updateGauges(status);
      const reason = compactionDue(this.config.compaction, this.#policyState(status), Date.now());
      if (reason && !this.#compactionBackoff.waiting(Date.now())) await this.compactNow(reason).catch(() => {});
    } finally {
      this.#schedule();
    }
  }

  /** Status for the API and the CLI. */
  async status(): Promise<DatabaseStatus> {
    const s = await this.#backend.status();
    this.#updateGauges(s);
    return {
      name: this.name,
      backend: this.#backend.location,
      kind: this.#backend.kind,
      ...s,
      compacting: this.#compaction !== null,
      lastCompaction: this.#lastCompaction,
      lastVerify: this.#lastVerify,
      lastAck: this.#lastAck,
      replicas: await Promise.all(this.#replicas.map((r) => r.status())),
      errors: [...this.#errors],
      compaction: this.#compactionBackoff.status(),
      ...(this.#capture && { capture: this.#capture.status() }),
    };
  }

  /**
   * Runs verify with a test restore, records the outcome for status and metrics, and returns
   * the report. Runs alone: a second call joins the first.
   */
  verifyNow(): Promise<VerifyReport> {
    this.#checkOpen();
    this.#verification ??= (async () => {
      const log = this.#deps.log.child({ db: this.name, component: "verify" });
      const started = performance.now();
      const report = await verify(this.#backend, { restore: true, rules: this.#rules, ...(this.#deps.tmpDir && { tmpDir: this.#deps.tmpDir }) });
      const m = this.#deps.metrics;
      m.verifications.inc({ db: this.name, result: report.ok ? "ok" : "failed" });
      m.verifyDuration.observe({ db: this.name }, (performance.now() - started) / 1000);
      this.#lastVerify = { at: new Date().toISOString(), ok: report.ok, problems: report.problems };
      if (report.ok) {
        m.lastVerifyOk.set({ db: this.name }, Date.now() / 1000);
        log.info({ records: report.records, restored: report.restored?.version }, "verify passed");
      } else {
        for (const p of report.problems) this.#record(new TidemarkError(p.code as ErrorCode, p.message));
        log.error({ problems: report.problems }, "verify found problems");
      }
      return report;
    })().finally(() => {
      this.#verification = null;
    });
    return this.#verification;
  }

  /**
   * Runs verify every `validationInterval`. The first run comes sooner, `FIRST_VERIFY_MS` after
   * the open, so that a daemon restarted more often than the interval still verifies.
   */
  #scheduleVerify(first = false): void {
    const every = this.config.validationMs;
    if (every === undefined || this.#closing) return;
    this.#verifyTimer = setTimeout(() => {
      this.verifyNow()
        .catch((err: unknown) => this.#deps.log.child({ db: this.name }).error({ err }, "verify could not run"))
        .finally(() => this.#scheduleVerify());
    }, first ? Math.min(every, FIRST_VERIFY_MS) : every);
    this.#verifyTimer.unref();
  }

  /** Restores the database into `file` (which must not exist), as of `at.version`, `at.time` or the head. */
  restoreTo(file: string, at: { version?: number; time?: number } = {}): Promise<RestoreResult> {
    this.#checkOpen();
    return restore(this.#backend, file, {
      ...(at.version !== undefined && { version: at.version }),
      ...(at.time !== undefined && { time: at.time }),
      rules: this.#rules,
    });
  }

  /**
   * Drains and closes: refuses new work, lets queued changes finish, abandons a running
   * compaction (nothing is installed), then closes the backend.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#timer) clearTimeout(this.#timer);
      if (this.#verifyTimer) clearTimeout(this.#verifyTimer);
      await this.#queue.run(() => undefined);
      this.#abort.abort(new TidemarkError("E_UNAVAILABLE", `database ${this.name} is shutting down`));
      // The capture stores what is committed, then lets go of the database.
      await this.#capturing;
      await this.#compaction?.catch(() => {});
      await this.#verification?.catch(() => {});
      await Promise.all(this.#replicas.map((r) => r.close()));
      closeShadow(this.#backend);
      await this.#backend.close();
      this.#gone = true;
      this.#deps.metrics.removeDatabase(this.name, this.config.replicas);
      this.#log.info({}, "closed");
    })();
    return this.#closing;
  }

  #checkOpen(): void {
    if (this.#closing) {
      throw new TidemarkError("E_UNAVAILABLE", `database ${this.name} is shutting down`, { hint: "retry once the daemon is back" });
    }
  }

  /**
   * Counts a failure of a request about this database (a malformed body, say) that the
   * database itself did not see; one it counted already is not counted again.
   */
  recordFailure(err: unknown): void {
    if (!(typeof err === "object" && err !== null && this.#recorded.has(err))) this.#record(err);
  }

  #record(err: unknown): void {
    if (this.#gone) return;
    if (typeof err === "object" && err !== null) this.#recorded.add(err);
    const code = err instanceof TidemarkError ? err.code : "E_INTERNAL";
    this.#deps.metrics.errors.inc({ db: this.name, code });
    this.#errors.push({ at: new Date().toISOString(), code, message: (err as Error)?.message ?? String(err) });
    if (this.#errors.length > ERRORS_KEPT) this.#errors.shift();
  }

  #compactionGauges(): void {
    if (this.#gone) return;
    const m = this.#deps.metrics;
    const db = { db: this.name };
    m.compactionFailures.set(db, this.#compactionBackoff.failures);
    m.compactionRetryAt.set(db, (this.#compactionBackoff.nextAt ?? 0) / 1000);
  }

  #updateGauges(s: BackendStatus): void {
    this.#deps.metrics.headVersion.set({ db: this.name }, s.version);
    this.#deps.metrics.backupBytes.set({ db: this.name }, s.bytes);
  }
}
