/**
 * `tidemark daemon [--config FILE]`
 */
import type { Command } from "commander";
import type { Config } from "../daemon/config.js";
import { requireCompression } from "../format/sealing.js";
import { ConfigError, TidemarkError, formatError } from "../util/errors.js";
import { Keyring } from "../format/keyring.js";
import { daemonLogger } from "../util/logger.js";

/** How long after a config file event the reload happens. */
const RELOAD_DEBOUNCE_MS = 200;

/** Registers the command. */
export function registerDaemon(program: Command): void {
  program
    .command("daemon")
    .summary("serve databases over HTTP on a Unix socket (the main job)")
    .description(
      "Run the backup daemon. Hosts send changes over HTTP on a Unix socket (mode 0600), optionally on\n" +
        "TCP with an API key, or through a spool directory; each change is acknowledged once durable.\n" +
        "Without --config it serves one database, \"default\", backed up to ./tidemark-data/default,\n" +
        "on the socket ./tidemark.sock, with the spool ./tidemark-spool.\n\n" +
        "Signals: SIGHUP (or saving the config file) reloads the configuration; SIGTERM or SIGINT\n" +
        "drains (requests in flight finish) and exits 0; a second one exits at once.\n" +
        "Logs are JSON lines on stdout. Under systemd (Type=notify) it reports READY=1 once every\n" +
        "database is open and the socket answers, through systemd-notify(1); see systemd/.",
    )
    .option("-c, --config <file>", "configuration file, YAML or JSON (see docs/daemon.md)")
    .option("--check", "validate the configuration (keys read, locations parsed, rules loaded; no backup opened), print it resolved as JSON (API key redacted), and exit")
    .addHelpText(
      "after",
      "\nExamples:\n  tidemark daemon\n  tidemark daemon --config /etc/tidemark/tidemark.yaml\n  tidemark daemon --config /etc/tidemark/tidemark.yaml --check",
    )
    .action(async (opts: { config?: string; check?: boolean }) => {
      const [{ defaultConfig, loadConfigFile }, { Daemon }, { notifySystemd }] = await Promise.all([
        import("../daemon/config.js"),
        import("../daemon/daemon.js"),
        import("../daemon/sd-notify.js"),
      ]);
      const load = (): Config => (opts.config ? loadConfigFile(opts.config) : defaultConfig());
      const config = load();
      if (opts.check) {
        await checkDatabases(config);
        const shown = config.tcp ? { ...config, tcp: { ...config.tcp, apiKey: "(redacted)" } } : config;
        process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
        return;
      }
      const log = daemonLogger(config.log.level, { format: config.log.format });
      // The handlers go in before anything starts: a SIGTERM while the databases open (or just
      // after "ready", while the config watcher loads) would otherwise kill the process unclean.
      const stopRequested = new Promise<void>((resolve) => {
        let signals = 0;
        const stop = (signal: string) => {
          if (++signals > 1) {
            log.warn({ signal }, "second signal: exiting at once");
            process.exit(1);
          }
          log.info({ signal }, "stopping");
          resolve();
        };
        process.on("SIGTERM", () => stop("SIGTERM"));
        process.on("SIGINT", () => stop("SIGINT"));
      });
      const daemon = await Daemon.start(config, log);
      const status = () => {
        const failed = daemon.failures.size;
        return `serving ${daemon.databaseNames.length} database(s)${failed ? `, ${failed} failed to open` : ""}`;
      };
      await notifySystemd({ READY: "1", STATUS: status() }, log);

      const reload = (why: string) => {
        let next: Config;
        try {
          next = load();
        } catch (err) {
          log.error({ reason: why, error: formatError(err) }, "new configuration rejected; the old one keeps running");
          return;
        }
        log.info({ reason: why }, "reloading configuration");
        daemon
          .reload(next)
          .then(() => notifySystemd({ STATUS: status() }, log))
          .catch((err: unknown) => log.error({ err }, "reload failed"));
      };
      process.on("SIGHUP", () => reload("SIGHUP"));
      // chokidar drops a second change within 50 ms of the first; reloading a moment after the
      // last event reads the file as the final write left it.
      let debounce: NodeJS.Timeout | null = null;
      const watcher = opts.config ? (await import("chokidar")).watch(opts.config, { ignoreInitial: true }) : null;
      watcher?.on("change", () => {
        if (debounce) clearTimeout(debounce);
        debounce = setTimeout(() => reload("config file changed"), RELOAD_DEBOUNCE_MS);
      });

      await stopRequested;
      if (debounce) clearTimeout(debounce);
      await watcher?.close();
      await notifySystemd({ STOPPING: "1", STATUS: "draining" }, log);
      await daemon.stop();
    });
}

/**
 * What `--check` checks beyond the file's own validation, without opening any backup: every
 * key can be read, every backend and replica location parses and its backend is installed,
 * the compression is available, the rules load. The first problem is thrown, naming the field.
 */
async function checkDatabases(config: Config): Promise<void> {
  const [{ checkLocation }, { loadRules }] = await Promise.all([import("../backup/registry.js"), import("../ops/rewrite.js")]);
  for (const [i, db] of config.databases.entries()) {
    const field = `databases[${i}]`;
    Keyring.load(db.keys, `${field}.encryption.keys`);
    const at = async (name: string, check: () => unknown) => {
      try {
        await check();
      } catch (err) {
        if (err instanceof TidemarkError) throw new ConfigError(`${field}.${name}`, err.message, err.hint === undefined ? {} : { hint: err.hint });
        throw err;
      }
    };
    await at("backend", () => checkLocation(db.backend));
    for (const [j, replica] of db.replicas.entries()) await at(`replicas[${j}]`, () => checkLocation(replica));
    await at("compression", () => db.compression && requireCompression(db.compression));
    await at("rules", () => loadRules(db.rules));
  }
}
