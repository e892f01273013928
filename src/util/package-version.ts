/**
 * tidemark's own version, from its package.json, found by walking up from this file (the same
 * code runs from src/ under the tests and from dist/src/ once built).
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

function readVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const file = path.join(dir, "package.json");
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, "utf8")) as { name?: string; version?: string };
      if (pkg.name === "tidemark" && pkg.version) return pkg.version;
    }
    const up = path.dirname(dir);
    if (up === dir) return "unknown";
    dir = up;
  }
}

/** The version in tidemark's package.json ("unknown" if it cannot be found). */
export const PACKAGE_VERSION: string = readVersion();
