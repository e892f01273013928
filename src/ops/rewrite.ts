/**
 * Statement rewriting: rules that repair known-bad SQL on its way into SQLite, in restore and
 * in compaction's replay. Each rule counts the statements it changed.
 */
import fs from "node:fs";
import type { Statement } from "../model/change.js";
import { InputError } from "../util/errors.js";

/** One rule: a JavaScript regular expression and its replacement (`$1` refers to a group). */
export interface Rule {
  readonly name: string;
  readonly pattern: string;
  readonly replacement: string;
}

/**
 * Core Lightning before PR 4090 expanded some statements without a space before WHERE. The
 * original backup plugin stored them as written; SQLite rejects them on replay.
 */
export const CORE_LIGHTNING_RULES: readonly Rule[] = Object.freeze([
  { name: "cln-reserved-til-where", pattern: "reserved_til=([0-9]+)WHERE", replacement: "reserved_til=$1 WHERE" },
  { name: "cln-peer-id-where", pattern: "peer_id=([0-9]+)WHERE channels\\.id=", replacement: "peer_id=$1 WHERE channels.id=" },
]);

/** Built-in rule sets by name. */
export const RULE_SETS: Readonly<Record<string, readonly Rule[]>> = Object.freeze({
  "core-lightning": CORE_LIGHTNING_RULES,
  none: Object.freeze([]),
});

/**
 * Loads rules from a spec: the name of a built-in set (`core-lightning`, `none`) or the path
 * of a JSON file holding `[{"name", "pattern", "replacement"}]`.
 */
export function loadRules(spec: string): Rule[] {
  const builtin = RULE_SETS[spec];
  if (builtin) return [...builtin];
  let text: string;
  try {
    text = fs.readFileSync(spec, "utf8");
  } catch (err) {
    throw new InputError(`rules "${spec}" is neither a built-in set nor a readable file: ${(err as Error).message}`, {
      hint: `use ${Object.keys(RULE_SETS).join(" or ")}, or a JSON file of [{"name","pattern","replacement"}]`,
    });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InputError(`rules file ${spec}: invalid JSON: ${(err as Error).message}`);
  }
  return validateRules(value, spec);
}

/** Validates rules from JSON; `where` names the source in errors. */
export function validateRules(value: unknown, where: string): Rule[] {
  if (!Array.isArray(value)) throw new InputError(`rules file ${where}: expected a JSON array of rules`);
  const names = new Set<string>();
  return value.map((r, i) => {
    const at = `rules file ${where}: rule [${i}]`;
    if (typeof r !== "object" || r === null || Array.isArray(r)) throw new InputError(`${at}: expected an object`);
    const { name, pattern, replacement, ...rest } = r as Record<string, unknown>;
    const extra = Object.keys(rest);
    if (extra.length) throw new InputError(`${at}: unknown field "${extra[0]}"; expected name, pattern, replacement`);
    if (typeof name !== "string" || name === "") throw new InputError(`${at}.name: expected a non-empty string`);
    if (names.has(name)) throw new InputError(`${at}.name: "${name}" is used twice`);
    names.add(name);
    if (typeof pattern !== "string" || pattern === "") throw new InputError(`${at}.pattern: expected a regular expression`);
    try {
      new RegExp(pattern, "g");
    } catch (err) {
      throw new InputError(`${at}.pattern: ${(err as Error).message}`);
    }
    if (typeof replacement !== "string") throw new InputError(`${at}.replacement: expected a string`);
    return { name, pattern, replacement };
  });
}

/** Applies rules to statements and counts, per rule, how many statements each changed. */
export class Rewriter {
  readonly #rules: { name: string; re: RegExp; replacement: string }[];
  readonly #counts = new Map<string, number>();

  constructor(rules: readonly Rule[]) {
    this.#rules = rules.map((r) => ({ name: r.name, re: new RegExp(r.pattern, "g"), replacement: r.replacement }));
    for (const r of rules) this.#counts.set(r.name, 0);
  }

  /** True when there are no rules, so callers can skip the work. */
  get empty(): boolean {
    return this.#rules.length === 0;
  }

  /** Returns the SQL with every rule applied. */
  rewriteSql(sql: string): string {
    let out = sql;
    for (const rule of this.#rules) {
      rule.re.lastIndex = 0;
      if (!rule.re.test(out)) continue;
      out = out.replace(rule.re, rule.replacement);
      this.#counts.set(rule.name, this.#counts.get(rule.name)! + 1);
    }
    return out;
  }

  /** Returns the statement with its SQL rewritten (the same object when nothing changed). */
  rewrite(st: Statement): Statement {
    if (typeof st === "string") return this.rewriteSql(st);
    const sql = this.rewriteSql(st.sql);
    return sql === st.sql ? st : { ...st, sql };
  }

  /** Statements changed, per rule name. */
  counts(): Record<string, number> {
    return Object.fromEntries(this.#counts);
  }
}
