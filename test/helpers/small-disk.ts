/**
 * A real full disk for tests: a 1 MiB tmpfs mounted on `dir` (the tests run as root), unmounted
 * when the test finishes. Returns false where mounting is not allowed (some CI containers), or
 * with TIDEMARK_TEST_NO_MOUNT=1; the caller then uses its stand-in and says so.
 */
import { execFileSync } from "node:child_process";
import { onTestFinished } from "vitest";

export function mountSmallDisk(dir: string): boolean {
  if (process.env.TIDEMARK_TEST_NO_MOUNT === "1") return false;
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir], { stdio: "ignore" });
  } catch {
    return false;
  }
  onTestFinished(() => {
    execFileSync("umount", ["-l", dir]);
  });
  return true;
}
