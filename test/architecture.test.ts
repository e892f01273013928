/**
 * Guards the layering of the sources (docs/architecture.md). src/ is read top to bottom —
 * commands, cln, host, daemon, ops, backup, format, model, util — and a file may import only
 * from its own folder or a lower one. The entry points at the top of src/ may import anything in
 * src/. A backend (backends/) may import only the backend kit (src/backend-kit.ts), other
 * backends/ files, node: builtins and npm packages; the one upward edge is the registry's lazy
 * `import()` of a backend. test/helpers/memory-storage.ts proves the kit is enough, so it may
 * reach nothing in src/ but the kit.
 *
 * The imports are read from the text (comments stripped), not by the compiler: static
 * `import`/`export ... from`, `import("...")`, `require("...")` and
 * `new URL("./x.js", import.meta.url)`. A ".js" specifier may name a ".ts" file.
 */
import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";

const ROOT = path.resolve(decodeURIComponent(new URL("..", import.meta.url).pathname));

/** Top to bottom: a file may import its own layer or one after it in this list. */
const LAYERS = ["commands", "cln", "host", "daemon", "ops", "backup", "format", "model", "util"] as const;
/** Top-level files of src/, which may import anything in src/. */
const ENTRY_POINTS = ["src/index.ts", "src/cli.ts", "src/cln-plugin-bin.ts", "src/backend-kit.ts"];
const KIT = "src/backend-kit.ts";
const REGISTRY = "src/backup/registry.ts";
const KIT_ONLY_BACKEND = "test/helpers/memory-storage.ts";

const CODE = /\.[cm]?[jt]sx?$/;

type Kind = "static" | "dynamic" | "url";

/** One import, both ends repo-relative with "/" separators. */
interface Edge {
  from: string;
  to: string;
  kind: Kind;
}

/** Where a repo path sits in the architecture. */
type Place =
  | { kind: "layer"; layer: string; rank: number }
  | { kind: "entry" }
  | { kind: "unplaced" }
  | { kind: "backends" }
  | { kind: "elsewhere" };

function place(file: string): Place {
  const parts = file.split("/");
  if (parts[0] === "backends") return { kind: "backends" };
  if (parts[0] !== "src") return { kind: "elsewhere" };
  if (parts.length === 2) return ENTRY_POINTS.includes(file) ? { kind: "entry" } : { kind: "unplaced" };
  const rank = (LAYERS as readonly string[]).indexOf(parts[1]!);
  return rank === -1 ? { kind: "unplaced" } : { kind: "layer", layer: parts[1]!, rank };
}

/** Every rule broken by these edges, one readable line each. */
function violations(edges: readonly Edge[]): string[] {
  const out: string[] = [];
  for (const edge of edges) {
    const why = brokenRule(edge);
    if (why) out.push(`${edge.from} -> ${edge.to} (${why})`);
  }
  return out;
}

function brokenRule({ from, to, kind }: Edge): string | null {
  const source = place(from);
  const target = place(to);
  if (source.kind === "backends") {
    if (target.kind === "backends" || to === KIT) return null;
    return "a backend may import only src/backend-kit.ts and backends/";
  }
  if (source.kind === "elsewhere" || source.kind === "unplaced") return null; // placement is its own test
  if (target.kind === "backends") {
    return from === REGISTRY && kind === "dynamic"
      ? null
      : "src/ may import backends/ only through the registry's dynamic import()";
  }
  if (target.kind === "elsewhere") return "src/ may not import from outside src/";
  if (source.kind === "entry") return null;
  if (target.kind === "entry") return `${source.layer} may not import an entry point`;
  if (target.kind === "unplaced") return `${source.layer} may not import a file that is in no layer`;
  if (target.rank < source.rank) return `${source.layer} may not import ${target.layer}`;
  return null;
}

/** Every edge from the kit-only backend, or from a non-src file it reaches, into src/ but the kit. */
function kitOnlyViolations(edgesOf: (file: string) => readonly Edge[]): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  const queue = [KIT_ONLY_BACKEND];
  for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
    if (seen.has(file)) continue;
    seen.add(file);
    for (const edge of edgesOf(file)) {
      if (edge.to.startsWith("src/")) {
        if (edge.to !== KIT) out.push(`${edge.from} -> ${edge.to} (the kit-only backend may reach src/ only through the kit)`);
      } else if (fs.existsSync(path.join(ROOT, edge.to))) {
        queue.push(edge.to);
      }
    }
  }
  return out;
}

// ---- reading imports ------------------------------------------------------------------------

/** Words after which a "/" starts a regular expression rather than a division. */
const BEFORE_REGEX = new Set(["return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do", "else", "yield", "await"]);

/**
 * The source with every comment blanked to spaces (newlines kept), strings, template literals
 * and regular expressions left as they are — so that an import inside a comment is not read, and
 * a "//" inside a string is not taken for a comment.
 */
function stripComments(src: string): string {
  let out = "";
  let i = 0;
  let last = ""; // the last significant token outside comments: a word or one character
  const braces: number[] = [0]; // open braces per nesting level; a template's ${ opens a level
  const blank = (end: number): void => {
    out += src.slice(i, end).replace(/[^\n]/g, " ");
    i = end;
  };
  const keep = (end: number): void => {
    out += src.slice(i, end);
    i = end;
  };
  /**
   * From just inside a backtick, or just after the "}" closing a "${": to just past the closing
   * backtick or the next "${". The text of a template with substitutions is blanked too (it cannot
   * be a specifier); a plain one is kept, as import(`./x.js`) names a module.
   */
  const template = (first: boolean): void => {
    let j = i;
    while (j < src.length && src[j] !== "`" && !(src[j] === "$" && src[j + 1] === "{")) j += src[j] === "\\" ? 2 : 1;
    const plain = first && src[j] === "`";
    if (plain) keep(Math.min(j, src.length));
    else blank(Math.min(j, src.length));
    if (src[j] === "`") {
      keep(j + 1);
      last = "`";
    } else if (j < src.length) {
      keep(j + 2);
      braces.push(0);
      last = "{";
    }
  };
  while (i < src.length) {
    const c = src[i]!;
    const next = src[i + 1];
    if (c === "/" && next === "/") {
      const end = src.indexOf("\n", i);
      blank(end === -1 ? src.length : end);
    } else if (c === "/" && next === "*") {
      const end = src.indexOf("*/", i + 2);
      blank(end === -1 ? src.length : end + 2);
    } else if (c === '"' || c === "'") {
      let j = i + 1;
      while (j < src.length && src[j] !== c && src[j] !== "\n") j += src[j] === "\\" ? 2 : 1;
      keep(Math.min(j + 1, src.length));
      last = c;
    } else if (c === "`") {
      keep(i + 1);
      template(true);
    } else if (c === "/" && (last === "" || BEFORE_REGEX.has(last) || /^[(,=:[!&|?{};+\-*%<>~^]$/.test(last))) {
      let j = i + 1;
      let inClass = false;
      while (j < src.length && src[j] !== "\n" && (inClass || src[j] !== "/")) {
        if (src[j] === "\\") j++;
        else if (src[j] === "[") inClass = true;
        else if (src[j] === "]") inClass = false;
        j++;
      }
      keep(Math.min(j + 1, src.length));
      last = "/regex/";
    } else if (/[A-Za-z_$0-9]/.test(c)) {
      const word = /^[A-Za-z_$0-9]+/.exec(src.slice(i, i + 64))![0];
      keep(i + word.length);
      last = word;
    } else {
      if (c === "{") braces[braces.length - 1]!++;
      if (c === "}") {
        if (braces[braces.length - 1] === 0 && braces.length > 1) {
          braces.pop();
          keep(i + 1);
          template(false);
          continue;
        }
        braces[braces.length - 1]!--;
      }
      keep(i + 1);
      if (!/\s/.test(c)) last = c;
    }
  }
  return out;
}

/** Every module specifier a source names, comments aside. */
function specifiers(src: string): { spec: string; kind: Kind }[] {
  const code = stripComments(src);
  const found: { spec: string; kind: Kind }[] = [];
  const scan = (re: RegExp, kind: Kind): void => {
    for (const m of code.matchAll(re)) found.push({ spec: m[2]!, kind });
  };
  // import x from "...", import type { ... } from "...", export * from "...", export { x } from "..."
  scan(/^[ \t]*(?:import|export)\b[^;"'`()=]*?\bfrom\s*(["'])([^"'\n]+)\1/gm, "static");
  // import "..."
  scan(/^[ \t]*import\s*(["'])([^"'\n]+)\1/gm, "static");
  // import x = require("..."), require("...")
  scan(/(?<![.\w$])require\s*\(\s*(["'])([^"'\n]+)\1\s*\)/g, "static");
  // import("..."), import(`...`) without substitutions
  scan(/(?<![.\w$])import\s*\(\s*(["'`])([^"'`$\n]+)\1\s*[,)]/g, "dynamic");
  // new URL("./x.js", import.meta.url): a module loaded by URL, e.g. a worker
  for (const m of code.matchAll(/\bnew\s+URL\s*\(\s*(["'])([^"'\n]+)\1\s*,\s*import\.meta\.url\s*\)/g)) {
    if (CODE.test(m[2]!)) found.push({ spec: m[2]!, kind: "url" });
  }
  return found;
}

/** The repo path a relative specifier names: the file itself, or the ".ts" a ".js" stands for. */
function resolve(from: string, spec: string): string {
  const base = path.posix.normalize(path.posix.join(path.posix.dirname(from), spec));
  const stem = base.replace(/\.([cm]?)js(x?)$/, "");
  const candidates = [base];
  const js = /\.([cm]?)js(x?)$/.exec(base);
  if (js) candidates.push(`${stem}.${js[1]}ts${js[2]}`);
  if (!CODE.test(base)) candidates.push(`${base}.ts`, `${base}.js`, `${base}/index.ts`, `${base}/index.js`);
  const exists = candidates.find((c) => fs.statSync(path.join(ROOT, c), { throwIfNoEntry: false })?.isFile());
  // An import of a file that is not there yet still says which layer it reaches into.
  return exists ?? candidates[candidates.length > 1 && js ? 1 : 0]!;
}

function edgesOf(file: string): Edge[] {
  const src = fs.readFileSync(path.join(ROOT, file), "utf8");
  return specifiers(src)
    .filter(({ spec }) => spec.startsWith("./") || spec.startsWith("../"))
    .map(({ spec, kind }) => ({ from: file, to: resolve(file, spec), kind }));
}

/** Every file under a repo folder, repo-relative, sorted. */
function filesUnder(dir: string): string[] {
  const abs = path.join(ROOT, dir);
  if (!fs.existsSync(abs)) return [];
  const out: string[] = [];
  for (const entry of fs.readdirSync(abs, { withFileTypes: true })) {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) out.push(...filesUnder(rel));
    else if (entry.isFile()) out.push(rel);
  }
  return out.sort();
}

const codeUnder = (dir: string): string[] => filesUnder(dir).filter((f) => CODE.test(f));

// ---- the tests ------------------------------------------------------------------------------

describe("architecture", () => {
  it("imports in src/ point only down the layers", () => {
    const files = codeUnder("src");
    expect(files.length).toBeGreaterThan(0);
    const edges = files.flatMap(edgesOf);
    expect(edges.length).toBeGreaterThan(0);
    expect(violations(edges), "imports in src/ that break the layering").toEqual([]);
  });

  it("backends import only the backend kit", () => {
    const files = codeUnder("backends");
    expect(files.length).toBeGreaterThan(0);
    expect(violations(files.flatMap(edgesOf)), "imports in backends/ of something other than the kit").toEqual([]);
  });

  it("the kit-only test backend imports only the kit", () => {
    expect(edgesOf(KIT_ONLY_BACKEND).map((e) => e.to)).toContain(KIT);
    expect(kitOnlyViolations(edgesOf), "imports of src/ by the kit-only backend").toEqual([]);
  });

  it("every file in src/ is in a layer folder or is an entry point", () => {
    const unplaced = filesUnder("src").filter((f) => place(f).kind === "unplaced");
    expect(unplaced, `files of src/ outside ${LAYERS.join(", ")} that are not entry points`).toEqual([]);
  });

  it("reports an import that points up the layers", () => {
    expect(violations([{ from: "src/format/x.ts", to: "src/daemon/y.ts", kind: "static" }])).toEqual([
      "src/format/x.ts -> src/daemon/y.ts (format may not import daemon)",
    ]);
  });

  it("allows the registry's dynamic import of a backend and no other upward edge to backends/", () => {
    expect(
      violations([
        { from: REGISTRY, to: "backends/file.ts", kind: "dynamic" },
        { from: "src/ops/copy.ts", to: "src/util/errors.ts", kind: "static" },
        { from: "src/index.ts", to: "src/commands/init.ts", kind: "static" },
        { from: "backends/s3.ts", to: "backends/s3-lease.ts", kind: "static" },
        { from: "backends/s3.ts", to: KIT, kind: "static" },
      ]),
    ).toEqual([]);
    expect(
      violations([
        { from: REGISTRY, to: "backends/file.ts", kind: "static" },
        { from: "src/backup/backup.ts", to: "backends/s3.ts", kind: "dynamic" },
        { from: "backends/file.ts", to: "src/util/errors.ts", kind: "static" },
        { from: "src/util/errors.ts", to: KIT, kind: "static" },
      ]),
    ).toEqual([
      `${REGISTRY} -> backends/file.ts (src/ may import backends/ only through the registry's dynamic import())`,
      "src/backup/backup.ts -> backends/s3.ts (src/ may import backends/ only through the registry's dynamic import())",
      "backends/file.ts -> src/util/errors.ts (a backend may import only src/backend-kit.ts and backends/)",
      `src/util/errors.ts -> ${KIT} (util may not import an entry point)`,
    ]);
  });

  it("reads every form of import and none inside comments or strings", () => {
    const src = [
      'import a from "./a.js";',
      "import type {",
      "  B,",
      "  C,",
      '} from "../b.js";',
      'import "./side-effect.js";',
      'export * from "./c.js";',
      'export { d } from "./d.js";',
      'const e = await import("./e.js");',
      'const w = new URL("./worker.js", import.meta.url);',
      'const pkg = new URL("../../package.json", import.meta.url);',
      '// import x from "./commented.js";',
      '/* import("./block-commented.js") */',
      'const s = "// not a comment"; const re = /["\']/g;',
      'const t = `${"}"} import("./in-template-text.js")`;',
      'import { z } from "zod";',
    ].join("\n");
    expect(specifiers(src).map((s) => `${s.kind} ${s.spec}`)).toEqual([
      "static ./a.js",
      "static ../b.js",
      "static ./c.js",
      "static ./d.js",
      "static zod",
      "static ./side-effect.js",
      "dynamic ./e.js",
      "url ./worker.js",
    ]);
  });
});
