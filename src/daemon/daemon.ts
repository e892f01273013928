/**
 * The daemon: serves several databases over HTTP (a Unix socket, and TCP with an API key) and
 * a spool directory, compacts them on schedule, reloads its configuration, and drains on stop.
 */
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import type { Config, DatabaseConfig } from "./config.js";
import { ManagedDatabase } from "./managed-database.js";
import { ConfigError, TidemarkError } from "../util/errors.js";
import { createApiHandler, type ApiContext } from "./http-api.js";
import { IngestChannels } from "./ingest-channel.js";
import type { Logger } from "../util/logger.js";
import { Metrics } from "./metrics.js";
import { Spool } from "./spool.js";
import { defaultShadowDir } from "../ops/shadow.js";
import { sweepStaleSpools } from "../ops/snapshot-check.js";
import { TokenBuckets } from "./rate-limit.js";
import { SOCKET_MODE, applyAccess, type AccessGroup } from "./access-group.js";

/**
 * How many databases open at once: enough to overlap one's reads and fsyncs with another's
 * CPU, few enough that a thousand do not hold a thousand logs open at once.
 */
const OPEN_CONCURRENCY = 16;

/** Runs `fn` over `items`, at most `limit` at a time; `fn` does not throw (#open records failures). */
async function forEachBounded<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** A database that could not be opened, kept so that requests and status can say why. */
interface FailedDatabase {
  readonly config: DatabaseConfig;
  readonly error: TidemarkError;
}

/** A running daemon. */
export class Daemon {
  readonly #log: Logger;
  readonly #metrics = new Metrics();
  readonly #dbs = new Map<string, ManagedDatabase>();
  readonly #failed = new Map<string, FailedDatabase>();
  readonly #servers: http.Server[] = [];
  #metricsServer: http.Server | null = null;
  /** The socket's ingest channels (ingest-channel.ts). */
  #channels: IngestChannels | null = null;
  #config: Config;
  #spool: Spool | null = null;
  #limiter: TokenBuckets;
  #draining = false;
  #stopping: Promise<void> | null = null;
  #reloading: Promise<void> = Promise.resolve();

  private constructor(config: Config, log: Logger) {
    this.#config = config;
    this.#log = log;
    this.#limiter = new TokenBuckets(config.rateLimit);
  }

  /** Opens every database, then listens; resolves once the daemon is ready. */
  static async start(config: Config, log: Logger): Promise<Daemon> {
    const d = new Daemon(config, log);
    try {
      if (config.tmpDir) fs.mkdirSync(config.tmpDir, { recursive: true, mode: 0o700 });
      if (config.shadowDir) fs.mkdirSync(config.shadowDir, { recursive: true, mode: 0o700 });
      // Snapshot uploads a crash cut short (their process is gone) are removed before any database opens.
      const stale = sweepStaleSpools(path.join(config.shadowDir ?? defaultShadowDir(), "tmp"));
      if (stale.length > 0) log.info({ files: stale }, `removed ${stale.length} snapshot temp file(s) left by a process that is gone`);
      // Before any database opens: a second daemon must say the socket is taken, not fail on
      // every backup's writer lock first.
      await checkSocket(config.socket);
      await forEachBounded(config.databases, OPEN_CONCURRENCY, (db) => d.#open(db));
      d.#inConfigOrder();
      await d.#restoreMissing();
      const handler = createApiHandler(d.#api());
      const socket = await listenOnSocket(config.socket, handler, config.group);
      d.#channels = new IngestChannels(d.#api());
      socket.on("upgrade", d.#channels.upgrade);
      d.#servers.push(socket);
      if (config.tcp) {
        const tcp = http.createServer(createApiHandler(d.#api(), config.tcp.apiKey));
        await listen(tcp, () => tcp.listen(config.tcp!.port, config.tcp!.host));
        d.#servers.push(tcp);
      }
      if (config.metrics) d.#metricsServer = await d.#listenForMetrics(config.metrics);
      if (config.spool) {
        d.#spool = new Spool(config.spool, d.#api(), log, config.group);
        await d.#spool.start(config.databases.map((db) => db.name));
      }
    } catch (err) {
      await d.stop();
      throw err;
    }
    log.info(
      {
        socket: config.socket,
        ...(config.tcp && { tcp: `${config.tcp.host}:${d.tcpPort}` }),
        ...(config.spool && { spool: config.spool }),
        ...(config.metrics && { metrics: `${config.metrics.host}:${d.metricsPort}` }),
        databases: [...d.#dbs.keys()],
        failed: [...d.#failed.keys()],
        config: config.source,
      },
      "ready",
    );
    return d;
  }

  /** The TCP port actually bound (useful when the config asked for port 0). */
  get tcpPort(): number | undefined {
    const addr = this.#servers[1]?.address();
    return addr && typeof addr === "object" ? addr.port : undefined;
  }

  /** The metrics listener's port, if there is one. */
  get metricsPort(): number | undefined {
    const addr = this.#metricsServer?.address();
    return addr && typeof addr === "object" ? addr.port : undefined;
  }

  /** Serves GET /metrics, and nothing else, without a key: Prometheus cannot reach a Unix socket. */
  async #listenForMetrics(at: { host: string; port: number }): Promise<http.Server> {
    if (!/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(at.host)) {
      this.#log.warn({ host: at.host }, "the metrics listener is not on loopback: anyone who can reach it reads the metrics (names of databases, sizes, errors)");
    }
    const server = http.createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://tidemark.invalid");
      if (url.pathname !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD")) {
        res.writeHead(404, { "content-type": "text/plain" });
        res.end("only GET /metrics is served here\n");
        return;
      }
      this.#metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": this.#metrics.registry.contentType });
          res.end(text);
        },
        (err: unknown) => {
          this.#log.error({ err }, "metrics could not be collected");
          res.writeHead(500).end();
        },
      );
    });
    await listen(server, () => server.listen(at.port, at.host));
    return server;
  }

  /** The databases being served (those that failed to open are in `failures`). */
  get databaseNames(): string[] {
    return [...this.#dbs.keys()];
  }

  /** Databases that failed to open, with why. */
  get failures(): ReadonlyMap<string, TidemarkError> {
    return new Map([...this.#failed].map(([k, v]) => [k, v.error]));
  }

  /** Lists the databases in the configuration's order, whichever finished opening first. */
  #inConfigOrder(): void {
    const opened = new Map(this.#dbs);
    this.#dbs.clear();
    for (const { name } of this.#config.databases) {
      const db = opened.get(name);
      if (db) this.#dbs.set(name, db);
    }
  }

  async #open(config: DatabaseConfig): Promise<void> {
    this.#metrics.addDatabase(config.name);
    try {
      const c = this.#config;
      const db = await ManagedDatabase.open(config, {
        log: this.#log,
        metrics: this.#metrics,
        groupCommit: c.groupCommit === "on" || (c.groupCommit === "auto" && c.databases.length > 1),
        ...(c.tmpDir && { tmpDir: c.tmpDir }),
        ...(c.shadowDir && { shadowDir: c.shadowDir }),
      });
      this.#dbs.set(config.name, db);
      this.#failed.delete(config.name);
      this.#metrics.databaseUp.set({ db: config.name }, 1);
    } catch (err) {
      const error =
        err instanceof TidemarkError ? err : new TidemarkError("E_INTERNAL", (err as Error).message ?? String(err), { cause: err });
      this.#failed.set(config.name, { config, error });
      this.#metrics.databaseUp.set({ db: config.name }, 0);
      this.#metrics.errors.inc({ db: config.name, code: error.code });
      this.#log.error({ db: config.name, err: error, code: error.code }, "database failed to open; requests to it get 503 until a reload");
    }
  }

  /**
   * Restores each database whose `restoreIfMissing` file does not exist, before anything is
   * served, so that a host started after the daemon finds its data. A failure stops the start:
   * a host must not begin again from an empty file while a backup exists.
   */
  async #restoreMissing(): Promise<void> {
    for (const cfg of this.#config.databases) {
      const file = cfg.restoreIfMissing;
      if (file === undefined || fs.existsSync(file)) continue;
      const failed = this.#failed.get(cfg.name);
      if (failed) {
        throw new TidemarkError(failed.error.code, `database ${cfg.name}: ${file} is missing and cannot be restored: ${failed.error.message}`, {
          ...(failed.error.hint && { hint: failed.error.hint }),
        });
      }
      const db = this.#dbs.get(cfg.name)!;
      if (db.head().version === 0) {
        this.#log.info({ db: cfg.name, file }, "database file missing and the backup holds nothing yet: nothing to restore");
        continue;
      }
      try {
        const r = await db.restoreTo(file);
        this.#log.info({ db: cfg.name, file, version: r.version, bytes: r.bytes, ms: Math.round(r.durationMs) }, "restored the missing database file before serving");
      } catch (err) {
        const e = err instanceof TidemarkError ? err : new TidemarkError("E_INTERNAL", String((err as Error)?.message ?? err));
        throw new TidemarkError(e.code, `database ${cfg.name}: restoring the missing ${file} failed: ${e.message}`, { ...(e.hint && { hint: e.hint }), cause: err });
      }
    }
  }

  #api(): ApiContext {
    return {
      database: (name) => {
        const failed = this.#failed.get(name);
        if (failed) {
          throw new TidemarkError("E_UNAVAILABLE", `database ${name} failed to open: ${failed.error.message}`, {
            hint: failed.error.hint ?? "fix the cause, then reload the daemon (SIGHUP)",
          });
        }
        return this.#dbs.get(name);
      },
      databases: () => [...this.#dbs.values()],
      metrics: this.#metrics,
      log: this.#log,
      maxChangeBytes: () => this.#config.maxChangeBytes,
      tmpDir: () => this.#config.tmpDir ?? os.tmpdir(),
      draining: () => this.#draining,
      failures: () => [...this.#failed.values()].map((f) => ({ name: f.config.name, code: f.error.code, error: f.error.message })),
      limiter: () => this.#limiter,
    };
  }

  /**
   * Applies a new configuration: added databases open, removed ones drain and close, changed
   * ones restart. Listener changes take effect on restart.
   */
  reload(next: Config): Promise<void> {
    this.#reloading = this.#reloading.then(() => this.#reload(next));
    return this.#reloading;
  }

  async #reload(next: Config): Promise<void> {
    if (this.#draining) return;
    const prev = this.#config;
    for (const [what, changed] of [
      ["socket", prev.socket !== next.socket],
      ["tcp", JSON.stringify(prev.tcp) !== JSON.stringify(next.tcp)],
      ["spool", prev.spool !== next.spool],
      ["group", prev.group?.gid !== next.group?.gid],
      ["metrics", JSON.stringify(prev.metrics) !== JSON.stringify(next.metrics)],
    ] as const) {
      if (changed) this.#log.warn({ setting: what }, "this setting changes only when the daemon restarts");
    }
    if (JSON.stringify(prev.rateLimit) !== JSON.stringify(next.rateLimit)) this.#limiter = new TokenBuckets(next.rateLimit);
    this.#config = {
      ...next,
      socket: prev.socket,
      ...(prev.tcp ? { tcp: prev.tcp } : {}),
      ...(prev.spool ? { spool: prev.spool } : {}),
      group: prev.group,
      ...(prev.metrics ? { metrics: prev.metrics } : {}),
    } as Config;
    const wanted = new Map(next.databases.map((db) => [db.name, db]));
    const current = new Map<string, DatabaseConfig>([
      ...[...this.#dbs].map(([k, v]) => [k, v.config] as const),
      ...[...this.#failed].map(([k, v]) => [k, v.config] as const),
    ]);
    const closing: Promise<void>[] = [];
    for (const [name, cfg] of current) {
      const want = wanted.get(name);
      if (want && JSON.stringify(want) === JSON.stringify(cfg) && !this.#failed.has(name)) continue;
      // A database that failed to open has series of its own (up 0, its error) to forget.
      if (this.#failed.delete(name)) this.#metrics.removeDatabase(name);
      const db = this.#dbs.get(name);
      this.#dbs.delete(name);
      if (db) closing.push(db.close());
      this.#log.info({ db: name }, want ? "database configuration changed; restarting it" : "database removed; draining it");
    }
    await Promise.all(closing);
    const opening = next.databases.filter((db) => !this.#dbs.has(db.name));
    await forEachBounded(opening, OPEN_CONCURRENCY, (db) => this.#open(db));
    this.#inConfigOrder();
    for (const db of opening) this.#spool?.addDatabase(db.name);
    this.#log.info({ databases: [...this.#dbs.keys()], failed: [...this.#failed.keys()] }, "configuration reloaded");
  }

  /**
   * Drains: new requests get 503, requests in flight and queued changes finish, a running
   * compaction is abandoned, then every backend closes.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#draining = true;
      this.#log.info({}, "draining");
      // An upgraded connection is the server's no more: its changes are answered, then it ends.
      const channels = this.#channels?.close();
      await Promise.all(this.#servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
      await channels;
      await new Promise<void>((resolve) => (this.#metricsServer ? this.#metricsServer.close(() => resolve()) : resolve()));
      await this.#spool?.close();
      await this.#reloading.catch(() => {});
      await Promise.all([...this.#dbs.values()].map((db) => db.close()));
      this.#dbs.clear();
      // Only a socket this daemon bound is its to remove.
      if (this.#servers.length > 0) fs.rmSync(this.#config.socket, { force: true });
      this.#log.info({}, "stopped");
    })();
    return this.#stopping;
  }
}

/**
 * Listens on a Unix socket with mode 0600, or 0660 of `group` (access-group.ts). An existing socket that nobody answers on is
 * stale and removed; a live one, or a path that is not a socket, is refused.
 */
async function listenOnSocket(file: string, handler: http.RequestListener, group: AccessGroup | undefined): Promise<http.Server> {
  await checkSocket(file);
  const server = http.createServer(handler);
  // The socket is created 0600: no moment exists in which others could connect.
  const umask = process.umask(0o177);
  try {
    await listen(server, () => server.listen(file));
  } finally {
    process.umask(umask);
  }
  try {
    applyAccess(file, group, SOCKET_MODE);
  } catch (err) {
    server.close();
    throw new ConfigError("group", `cannot give the socket ${file} to group ${group?.name}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      hint: "the daemon's user must be a member of that group (under systemd: SupplementaryGroups=)",
    });
  }
  return server;
}

/** Refuses a live socket, or a path that is not a socket; removes a stale socket. */
async function checkSocket(file: string): Promise<void> {
  let stat: fs.Stats | undefined;
  try {
    stat = fs.lstatSync(file);
  } catch {
    // nothing there
  }
  if (stat) {
    if (!stat.isSocket()) {
      throw new ConfigError("socket", `${file} exists and is not a socket; refusing to remove it`, {
        hint: "move that file away, or set another socket path",
      });
    }
    if (await answers(file)) {
      throw new TidemarkError("E_LOCKED", `another daemon is listening on ${file}`, {
        hint: "one daemon serves every database: ask it (tidemark status --socket), stop it first, or set another socket path",
      });
    }
    fs.rmSync(file);
  }
}

function answers(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(file);
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}

function listen(server: http.Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.once("listening", () => {
      server.off("error", reject);
      resolve();
    });
    start();
  });
}
