#!/usr/bin/env node
/**
 * The `tidemark` command line. Exit codes: 0 success, 1 error, 2 usage error.
 *
 * Start-up loads only what the command line asks for: `tidemark --version` reads package.json
 * and nothing else; a command line that names a command loads commander and that command's
 * module; any other (--help, a typo) loads every command module. A command module loads what its
 * action runs when it runs (see src/commands/common.ts).
 */
import { readFileSync } from "node:fs";
import type { Command, Help } from "commander";
import { TidemarkError, formatError } from "./util/errors.js";

const EXIT_ERROR = 1;
const EXIT_USAGE = 2;
/** 128 + SIGINT, as shells report a command stopped by Ctrl-C. */
const EXIT_INTERRUPTED = 130;

/** The version in tidemark's package.json. */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;
}

/** Each command's module and the function that registers it, by the command names it registers. */
const COMMANDS: Record<string, () => Promise<(program: Command) => void>> = {
  init: async () => (await import("./commands/init.js")).registerInit,
  ingest: async () => (await import("./commands/ingest.js")).registerIngest,
  status: async () => (await import("./commands/status.js")).registerStatus,
  restore: async () => (await import("./commands/restore.js")).registerRestore,
  compact: async () => (await import("./commands/compact.js")).registerCompact,
  rewind: async () => (await import("./commands/rewind.js")).registerRewind,
  verify: async () => (await import("./commands/verify.js")).registerVerify,
  copy: async () => (await import("./commands/copy.js")).registerCopy,
  watch: async () => (await import("./commands/watch.js")).registerWatch,
  daemon: async () => (await import("./commands/daemon.js")).registerDaemon,
  cln: async () => (await import("./commands/cln.js")).registerCln,
};
/** Command names registered by another command's module. */
const REGISTERED_BY: Record<string, string> = { "cln-plugin": "cln" };

/**
 * Builds the program with every command registered, or with only the command `only` when the
 * command line names one: its parsing, errors and --help are the same either way (the program's
 * own options come before the command name), and the other command modules stay unloaded.
 */
export async function buildProgram(only?: string): Promise<Command> {
  const name = only !== undefined && Object.hasOwn(REGISTERED_BY, only) ? REGISTERED_BY[only] : only;
  const chosen = name !== undefined && Object.hasOwn(COMMANDS, name) ? [COMMANDS[name]!] : Object.values(COMMANDS);
  const [{ Command, Help }, ...registers] = await Promise.all([import("commander"), ...chosen.map((load) => load())]);
  const program = new Command()
    .name("tidemark")
    .description("Write-ahead changelog backups for SQLite: every acknowledged transaction is durable before the host commits.")
    .version(packageVersion(), "-V, --version", "print the tidemark version")
    .enablePositionalOptions()
    .showHelpAfterError("(add --help for usage)")
    .exitOverride()
    .configureHelp({ boxWrap: reflowWith(Help) });
  for (const register of registers) register(program);
  for (const cmd of program.commands) {
    cmd
      .exitOverride()
      .showHelpAfterError("(add --help for usage)")
      .configureOutput({ outputError: (text, write) => write(withSingleDashSuggestion(cmd, text)) });
  }
  program.addHelpText(
    "after",
    "\nA <backend> is a directory path (the file backend), file:PATH, or a backend URL.\n" +
      "Exit codes: 0 success, 1 error, 2 usage error, 130 interrupted. Run tidemark <command> --help for details.",
  );
  return program;
}

/**
 * Adds "(Did you mean --json?)" to commander's "unknown option '-json'": a long option typed with
 * one dash, which commander reads as short flags and does not suggest for.
 */
function withSingleDashSuggestion(cmd: Command, text: string): string {
  const m = /unknown option '-([a-z][a-z-]+)'/.exec(text);
  if (!m) return text;
  const long = `--${m[1]}`;
  const known = [...cmd.options.map((o) => o.long), "--help"];
  return known.includes(long) ? text.replace(/\n?$/, `\n(Did you mean ${long}?)\n`) : text;
}

/**
 * Wraps help text to the terminal, paragraph by paragraph. The texts are written with line
 * breaks for reading in the source: a paragraph's breaks are joined before it is wrapped, and a
 * paragraph with indented lines (examples, formats) is left as written.
 */
function reflowWith(HelpClass: typeof Help) {
  return function reflow(this: Help, text: string, width: number): string {
    // Too narrow to wrap (commander's own rule): as written is the most readable.
    if (width < this.minWidthToWrap) return text;
    return text
      .split("\n\n")
      .map((p) => (/\n\s/.test(p) ? p : HelpClass.prototype.boxWrap.call(this, p.replaceAll("\n", " "), width)))
      .join("\n\n");
  };
}

/** Runs the CLI with `argv` and returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = await buildProgram(argv[2]);
  const { CommanderError } = await import("commander");
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander printed its own message already.
      if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.code === "commander.help") return 0;
      return EXIT_USAGE;
    }
    if (err instanceof TidemarkError && err.code === "E_INTERRUPTED") {
      process.stderr.write(`${err.message}\n`);
      return EXIT_INTERRUPTED;
    }
    process.stderr.write(`${formatError(err)}\n`);
    if (!(err instanceof TidemarkError) && process.env.TIDEMARK_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
    return err instanceof TidemarkError && err.code === "E_USAGE" ? EXIT_USAGE : EXIT_ERROR;
  }
}

// A reader that stops early (`tidemark status … | head -3`) is not an error. What is left to
// print is dropped, and the command finishes as it would have: an ingest still makes every
// change durable, and locks are released as usual.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code !== "EPIPE" && err.code !== "ERR_STREAM_DESTROYED") throw err;
});
// The version alone needs neither commander nor any command: printed as commander prints it.
const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) process.stdout.write(`${packageVersion()}\n`);
else process.exitCode = await main(process.argv);
