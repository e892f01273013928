/**
 * Helpers shared by the CLI commands.
 */
import { InvalidArgumentError } from "commander";
import type { Backend, OpenMode } from "../backend.js";
import { openBackend } from "../backend-registry.js";
import { terminalLogger } from "../logger.js";

/** Opens the backend at `location`, runs `fn`, and always closes it. */
export async function withBackend<T>(location: string, mode: OpenMode, fn: (backend: Backend) => Promise<T>): Promise<T> {
  const backend = await openBackend(location, { mode, log: terminalLogger() });
  try {
    return await fn(backend);
  } finally {
    await backend.close();
  }
}

/** Parses a version argument: an integer >= 1. */
export function parseVersion(value: string): number {
  if (!/^[0-9]+$/.test(value)) throw new InvalidArgumentError("expected an integer >= 1.");
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("expected an integer >= 1.");
  return n;
}

/** Formats a byte count for people. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Formats milliseconds for people. */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** Prints a JSON document on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Formats per-rule rewrite counts, or "" when there were none. */
export function formatRewrites(counts: Record<string, number>): string {
  const used = Object.entries(counts);
  if (used.length === 0) return "";
  return `rewrites: ${used.map(([name, n]) => `${name}=${n}`).join(", ")}`;
}
