#!/usr/bin/env node
/**
 * The `tidemark` command line. Exit codes: 0 success, 1 error, 2 usage error.
 *
 * Start-up loads only what the command line asks for: `tidemark --version` reads package.json
 * and nothing else; any other command line loads commander and the command modules (which load
 * what their actions run when they run; see src/commands/common.ts).
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

/** Builds the program with every command registered. */
export async function buildProgram(): Promise<Command> {
  const [
    { Command, Help },
    { registerInit },
    { registerIngest },
    { registerStatus },
    { registerRestore },
    { registerCompact },
    { registerRewind },
    { registerVerify },
    { registerCopy },
    { registerWatch },
    { registerDaemon },
    { registerCln },
  ] = await Promise.all([
    import("commander"),
    import("./commands/init.js"),
    import("./commands/ingest.js"),
    import("./commands/status.js"),
    import("./commands/restore.js"),
    import("./commands/compact.js"),
    import("./commands/rewind.js"),
    import("./commands/verify.js"),
    import("./commands/copy.js"),
    import("./commands/watch.js"),
    import("./commands/daemon.js"),
    import("./commands/cln.js"),
  ]);
  const program = new Command()
    .name("tidemark")
    .description("Write-ahead changelog backups for SQLite: every acknowledged transaction is durable before the host commits.")
    .version(packageVersion(), "-V, --version", "print the tidemark version")
    .enablePositionalOptions()
    .showHelpAfterError("(add --help for usage)")
    .exitOverride()
    .configureHelp({ boxWrap: reflowWith(Help) });
  registerInit(program);
  registerIngest(program);
  registerStatus(program);
  registerRestore(program);
  registerCompact(program);
  registerRewind(program);
  registerVerify(program);
  registerCopy(program);
  registerWatch(program);
  registerDaemon(program);
  registerCln(program);
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
  const program = await buildProgram();
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
