/**
 * docs/operations.md has a table that says what every error code means and what to do about it.
 * This keeps that table in step with ERROR_CODES in src/errors.ts: every code has exactly one
 * row, and the table has no row for a code that does not exist.
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { ERROR_CODES } from "../../src/util/errors.js";

const DOC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../docs/operations.md");

/** The code in the first cell of each table row that starts with "| `E_". */
function tableCodes(markdown: string): string[] {
  return markdown
    .split("\n")
    .filter((line) => line.startsWith("| `E_"))
    .map((line) => {
      const m = /^\| `(E_[A-Z_]+)` *\|/.exec(line);
      expect(m, `a row whose first cell is not a single code: ${line}`).not.toBeNull();
      return m![1]!;
    });
}

describe("docs/operations.md error-code table", () => {
  const codes = tableCodes(fs.readFileSync(DOC, "utf8"));
  const known = Object.keys(ERROR_CODES);

  it("has a row for every code in ERROR_CODES, and only one", () => {
    for (const code of known) {
      expect(codes.filter((c) => c === code).length, `rows for ${code}`).toBe(1);
    }
  });

  it("has no row for a code that ERROR_CODES does not define", () => {
    expect(codes.filter((c) => !known.includes(c))).toEqual([]);
  });

  it("has one row per code, no more", () => {
    expect(codes.length).toBe(known.length);
  });
});
