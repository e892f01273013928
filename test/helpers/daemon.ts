/**
 * Runs the daemon as a real child process, and talks HTTP to it over its socket or TCP.
 */
import type { ChildProcess } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { spawnCli } from "./cli.js";

/** A running daemon child. */
export interface DaemonProcess {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly socket: string;
  readonly configFile: string | null;
  /** Everything it printed on stdout (JSON log lines) and stderr. */
  logs(): string;
  /** Sends SIGTERM and waits for the exit; returns the exit code. */
  stop(): Promise<number | null>;
}

/** An HTTP reply. */
export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  json(): any;
}

/** Starts `tidemark daemon` in `dir`, with `config` written as YAML-compatible JSON unless null. */
export async function startDaemon(dir: string, config: object | null, env: NodeJS.ProcessEnv = {}): Promise<DaemonProcess> {
  let configFile: string | null = null;
  const args = ["daemon"];
  if (config) {
    configFile = path.join(dir, "tidemark.json");
    fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
    args.push("--config", configFile);
  }
  const socket = path.join(dir, (config as { socket?: string } | null)?.socket ?? "tidemark.sock");
  const child = spawnCli(args, { cwd: dir, env });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}:\n${out}`);
    return out.includes('"msg":"ready"');
  }, 15_000, () => out);
  return {
    child,
    dir,
    socket,
    configFile,
    logs: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

/** Polls `check` until it returns true. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs = 10_000, describe?: () => string): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out waiting${describe ? `:\n${describe()}` : ""}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Makes one HTTP request over a Unix socket (`target` is a path) or TCP (`target` is a port). */
export function request(
  target: string | number,
  method: string,
  urlPath: string,
  body?: string | Buffer,
  headers: Record<string, string> = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        method,
        path: urlPath,
        headers: { ...(body !== undefined && { "content-length": String(Buffer.byteLength(body)) }), ...headers },
        ...(typeof target === "string" ? { socketPath: target } : { host: "127.0.0.1", port: target }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const buf = Buffer.concat(chunks);
          resolve({ status: res.statusCode!, headers: res.headers, body: buf, json: () => JSON.parse(buf.toString("utf8")) });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

/** The reasons the spool in `spool` wrote in rejected/, oldest first. */
export function spoolReasons(spool: string): string[] {
  const dir = path.join(spool, "rejected");
  return fs
    .readdirSync(dir)
    .filter((n) => n.endsWith(".reason"))
    .sort((a, b) => Number(a.split(".")[2]) - Number(b.split(".")[2]))
    .map((n) => fs.readFileSync(path.join(dir, n), "utf8"));
}
