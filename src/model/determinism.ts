/**
 * Refuses SQL whose result would differ when the backup is replayed: random numbers and the
 * current time. The Journal checks every statement before it runs.
 *
 * tidemark refuses rather than rewrites: turning `UPDATE t SET x = random()` into a literal
 * would give every row the same value, which is not what the host ran. The host computes the
 * value itself and binds it as a parameter instead.
 */
import { TidemarkError } from "../util/errors.js";

const RANDOM = /\b(random|randomblob)\s*\(/i;
const NOW_KEYWORD = /\b(current_timestamp|current_date|current_time)\b/i;
const TIME_FUNCTION = /\b(date|time|datetime|julianday|unixepoch|strftime|timediff)\s*\(/gi;

/** Any word the checks below look for: SQL without one (most of it) is done with one test. */
const ANY_SUSPECT = /\b(?:random|randomblob|current_timestamp|current_date|current_time|date|time|datetime|julianday|unixepoch|strftime|timediff)\b/i;

/** Throws E_NONDETERMINISTIC if `sql` uses random values or the current time. */
export function checkDeterministic(sql: string): void {
  if (!ANY_SUSPECT.test(sql)) return;
  const code = stripLiterals(sql);
  const random = RANDOM.exec(code);
  if (random) refuse(sql, `${random[1]!.toLowerCase()}()`, "generate the value in your code (crypto.randomBytes, crypto.randomInt) and bind it as a parameter");
  const now = NOW_KEYWORD.exec(code);
  if (now) refuse(sql, now[1]!.toUpperCase(), "bind the time as a parameter, for example new Date().toISOString()");
  // A time function reads the clock when one of its arguments is 'now', or when it has no time
  // argument at all (strftime's first argument is the format).
  const noComments = stripComments(sql);
  for (const m of noComments.matchAll(TIME_FUNCTION)) {
    const name = m[1]!.toLowerCase();
    const args = splitArgs(noComments, m.index + m[0].length);
    const timeArgs = name === "strftime" ? args.slice(1) : args;
    if (timeArgs.length === 0 || timeArgs.some((a) => /^'now'$/i.test(a.trim()))) {
      refuse(sql, `${name}(${args.join(",")})`, "bind the time as a parameter, for example new Date().toISOString()");
    }
  }
}

function refuse(sql: string, what: string, hint: string): never {
  const flat = sql.replace(/\s+/g, " ").trim();
  throw new TidemarkError(
    "E_NONDETERMINISTIC",
    `${what} would give a different result when the backup is replayed: ${flat.length > 120 ? `${flat.slice(0, 120)}…` : flat}`,
    { hint },
  );
}

/** Blanks out string literals, quoted identifiers and comments, keeping the length. */
function stripLiterals(sql: string): string {
  return stripComments(sql).replace(/'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]/g, (m) => " ".repeat(m.length));
}

function stripComments(sql: string): string {
  return sql.replace(/'(?:[^']|'')*'|--[^\n]*|\/\*[\s\S]*?(?:\*\/|$)/g, (m) => (m.startsWith("'") ? m : " ".repeat(m.length)));
}

/** The top-level arguments of the call whose "(" ends just before `from`. */
function splitArgs(sql: string, from: number): string[] {
  const args: string[] = [];
  let depth = 0;
  let current = "";
  for (let i = from; i < sql.length; i++) {
    const c = sql[i]!;
    if (c === "'") {
      const end = sql.indexOf("'", i + 1);
      const stop = end < 0 ? sql.length : end;
      current += sql.slice(i, stop + 1);
      i = stop;
      continue;
    }
    if (c === "(") depth++;
    if (c === ")") {
      if (depth === 0) break;
      depth--;
    }
    if (c === "," && depth === 0) {
      args.push(current);
      current = "";
      continue;
    }
    current += c;
  }
  if (current.trim() !== "" || args.length > 0) args.push(current);
  return args.filter((a, i) => a.trim() !== "" || i < args.length - 1);
}
