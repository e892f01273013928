/**
 * Builds dist/ once before the suite, so tests that spawn the CLI run the code under test.
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export default function setup(): () => void {
  // Shadow databases (src/ops/shadow.ts) of every backup the tests write go to one temp
  // directory, inherited by the test workers and the CLI and daemon processes they start.
  const shadows = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-shadows-"));
  process.env.TIDEMARK_SHADOW_DIR ??= shadows;
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  execFileSync(process.execPath, [path.join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], {
    cwd: root,
    stdio: "inherit",
  });
  // As npm run build does: the two executables must be executable.
  for (const bin of ["dist/src/cli.js", "dist/src/cln-plugin-bin.js"]) fs.chmodSync(path.join(root, bin), 0o755);
  // A child process still exiting may add a file while the directory is removed (ENOTEMPTY):
  // rmSync retries those.
  return () => fs.rmSync(shadows, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}
