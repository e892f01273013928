/**
 * The command line's own cost (BENCH_ONLY=cli), each against a limit measured in the same run:
 *
 *   start-up        `tidemark --version`, `tidemark status <small backup>` and `tidemark --help`
 *                   vs bare `node -e 0`
 *   ingest, one     one change per `tidemark ingest` process (as a shell script feeding a host's
 *   per process     changes would run it) vs a node process that appends and fdatasyncs the
 *                   bytes of the record tidemark writes for it (bench/raw-writer.ts once)
 *   ingest, long    BENCH_INGEST_CHANGES changes as JSON lines through one `tidemark ingest`
 *   running         vs a node process reading the same lines with readline and appending and
 *                   fdatasyncing each one (bench/raw-writer.ts lines), per change. Enough
 *                   changes (20,000) that each process's start is a few per cent of its time:
 *                   the row above measures the start, this one the cost of a change
 *
 * Every command runs as its own process under bash's `time` (TIMEFORMAT %R %U %S): wall time,
 * and the child's CPU time (user + system, from the kernel's rusage of the child), which Node
 * cannot read for a child it spawns. The commands of a row run interleaved (a b a b …), and each
 * figure is the median of BENCH_CLI_RUNS runs (the long-running ingest: of 3 runs).
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { openBackend } from "../src/backup/registry.js";
import { encodeChangeRecord } from "../src/format/record-codec.js";
import { applyChange } from "../src/ops/ingest.js";
import { ms, percentile, type Row } from "./table.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(HERE, "../src/cli.js");
const RAW_WRITER = path.join(HERE, "raw-writer.js");

/** One command to time: its argv, and the file its stdin reads (none: /dev/null), in run `i`. */
interface Timed {
  readonly argv: readonly string[] | ((run: number) => readonly string[]);
  readonly stdin?: (run: number) => string;
}

/** Medians over the runs, in ms. */
interface Figures {
  readonly wallMs: number;
  readonly cpuMs: number;
}

const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * Runs each command `runs` times, interleaved, each as a child of one bash that times it, and
 * returns each command's median wall and CPU time. A command that fails stops the benchmark.
 */
function timeCommands(dir: string, commands: readonly Timed[], runs: number): Figures[] {
  fs.mkdirSync(dir, { recursive: true });
  const times = (k: number) => path.join(dir, `times.${k}`);
  const errors = (k: number) => path.join(dir, `stderr.${k}`);
  const failed = path.join(dir, "failed");
  const lines = ["TIMEFORMAT='%3R %3U %3S'"];
  for (let i = 0; i < runs; i++) {
    commands.forEach((c, k) => {
      const input = c.stdin ? c.stdin(i) : "/dev/null";
      const argv = typeof c.argv === "function" ? c.argv(i) : c.argv;
      lines.push(
        `{ time ${argv.map(quote).join(" ")} <${quote(input)} >/dev/null 2>>${quote(errors(k))} ; } 2>>${quote(times(k))} || echo "${k} $?" >>${quote(failed)}`,
      );
    });
  }
  const script = path.join(dir, "run.sh");
  fs.writeFileSync(script, `${lines.join("\n")}\n`);
  execFileSync("bash", [script], { stdio: "inherit" });
  if (fs.existsSync(failed)) {
    const [k] = fs.readFileSync(failed, "utf8").split(" ");
    throw new Error(`bench cli: command ${k} of ${script} failed: ${fs.readFileSync(errors(Number(k)), "utf8").slice(0, 2000)}`);
  }
  return commands.map((_, k) => {
    const samples = fs
      .readFileSync(times(k), "utf8")
      .trim()
      .split("\n")
      .map((l) => l.split(" ").map(Number) as [number, number, number]);
    return {
      wallMs: percentile(samples.map(([r]) => r * 1000), 50),
      cpuMs: percentile(samples.map(([, u, s]) => (u + s) * 1000), 50),
    };
  });
}

/** A row judged on both ratios, wall and CPU, against `goal` (an upper bound). */
function row(target: string, ours: Figures, limit: Figures, limitName: string, goal: number | null, per = 1): Row {
  const wall = ours.wallMs / limit.wallMs;
  const cpu = ours.cpuMs / limit.cpuMs;
  return {
    target,
    measured: ms(ours.wallMs / per),
    limit: `${ms(limit.wallMs / per)} ${limitName}`,
    ratio: wall,
    cpu: { measured: ms(ours.cpuMs / per), limit: ms(limit.cpuMs / per), ratio: cpu },
    goal: goal === null ? "report" : `≤ ${goal}`,
    ok: goal === null || (wall <= goal && cpu <= goal),
  };
}

const CREATE = "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER, amount INTEGER, memo TEXT)";
const statementFor = (v: number) => `INSERT INTO ledger (id, account, amount, memo) VALUES (${v}, ${v % 97}, ${(v * 31) % 1000}, 'entry ${v}')`;
const lineFor = (v: number) => JSON.stringify({ version: v, transaction: [v === 1 ? CREATE : statementFor(v)] });

/** A file backup holding versions 1..n. */
async function smallBackup(location: string, n: number): Promise<void> {
  const backend = await openBackend(location, { mode: "create" });
  try {
    for (let v = 1; v <= n; v++) await applyChange(backend, { version: v, transaction: [v === 1 ? CREATE : statementFor(v)] });
  } finally {
    await backend.close();
  }
}

/** Adds the CLI rows to `rows`. */
export async function benchCli(dir: string, rows: Row[], runs: number, changes: number): Promise<void> {
  const node = process.execPath;

  // ---------------------------------------------------------------- start-up
  const small = path.join(dir, "small");
  await smallBackup(small, 10);
  const [bare, version, status, help] = timeCommands(
    path.join(dir, "startup"),
    [{ argv: [node, "-e", "0"] }, { argv: [node, CLI, "--version"] }, { argv: [node, CLI, "status", small] }, { argv: [node, CLI, "--help"] }],
    runs,
  );
  rows.push(row("tidemark --version vs node -e 0", version!, bare!, "node -e 0", 1.5));
  rows.push(row("tidemark status (10-change file backup) vs node -e 0", status!, bare!, "node -e 0", 2.5));
  rows.push(row("tidemark --help vs node -e 0", help!, bare!, "node -e 0", null));

  // ---------------------------------------------------------------- ingest, one change per process
  const once = path.join(dir, "ingest-once");
  const backup = path.join(once, "backup");
  fs.mkdirSync(once, { recursive: true });
  await smallBackup(backup, 1);
  const lineFile = (i: number) => path.join(once, `line.${i}`);
  const recordFile = (i: number) => path.join(once, `record.${i}`);
  for (let i = 0; i < runs; i++) {
    const v = i + 2;
    fs.writeFileSync(lineFile(i), `${lineFor(v)}\n`);
    // The bytes tidemark appends for this change (its timestamp aside, which is as long).
    fs.writeFileSync(recordFile(i), encodeChangeRecord({ version: v, timestamp: Date.now(), transaction: [statementFor(v)] }));
  }
  const [ingestOnce, rawOnce] = timeCommands(
    path.join(once, "times"),
    [
      { argv: [node, CLI, "ingest", backup], stdin: lineFile },
      { argv: [node, RAW_WRITER, "once", path.join(once, "raw.log")], stdin: recordFile },
    ],
    runs,
  );
  rows.push(row("tidemark ingest, 1 change per process, vs raw writer process", ingestOnce!, rawOnce!, "raw append+fdatasync", 1.3));

  // ---------------------------------------------------------------- ingest, long-running
  const long = path.join(dir, "ingest-long");
  fs.mkdirSync(long, { recursive: true });
  const input = path.join(long, "changes.jsonl");
  fs.writeFileSync(input, Array.from({ length: changes }, (_, i) => `${lineFor(i + 1)}\n`).join(""));
  const longRuns = 3;
  // Each run ingests versions 1..N into a new, empty backup, and the raw writer into a new file.
  const emptyBackup = (i: number) => path.join(long, `backup.${i}`);
  for (let i = 0; i < longRuns; i++) await (await openBackend(emptyBackup(i), { mode: "create" })).close();
  const [ingestLong, rawLong] = timeCommands(
    path.join(long, "times"),
    [
      { argv: (i) => [node, CLI, "ingest", emptyBackup(i)], stdin: () => input },
      { argv: (i) => [node, RAW_WRITER, "lines", path.join(long, `raw.${i}.log`)], stdin: () => input },
    ],
    longRuns,
  );
  rows.push(row(`tidemark ingest, ${changes.toLocaleString("en-US")} changes in one process, per change`, ingestLong!, rawLong!, "raw append+fdatasync loop", 1.3, changes));
}
