/**
 * A fresh temp directory per test, removed after it.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { onTestFinished } from "vitest";

/** Creates a temp directory that is removed when the current test finishes. */
export function tmpDir(prefix = "tidemark-test-"): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Every file under `dir` (the writer lock aside), with its size: what a refused change must leave alone. */
export function fileSizes(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const name of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const p = path.join(dir, name);
    if (fs.statSync(p).isFile() && !name.endsWith("LOCK")) out[name] = fs.statSync(p).size;
  }
  return out;
}
