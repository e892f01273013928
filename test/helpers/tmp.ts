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
