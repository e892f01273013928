/**
 * A real S3-compatible server (s3rver) on 127.0.0.1, as a child process the tests control.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/s3rver.mjs");
export const BUCKET = "tidemark-test";

// The SDK's default provider chain reads these; s3rver accepts exactly these.
process.env.AWS_ACCESS_KEY_ID = "S3RVER";
process.env.AWS_SECRET_ACCESS_KEY = "S3RVER";
process.env.AWS_REGION = "us-east-1";

/** A running s3rver. */
export interface S3Server {
  /** Where s3rver keeps the objects, as files named <bucket>/<key>._S3rver_object. */
  readonly dir: string;
  readonly port: number;
  readonly endpoint: string;
  /** A location for a fresh backup under a random prefix. */
  location(prefix?: string): string;
  /** Whether an object exists, read from s3rver's files. */
  has(key: string): boolean;
  /** Keys under a prefix, read from s3rver's files. */
  keys(prefix: string): string[];
  /**
   * Overwrites bytes of a stored log or blob in place, in s3rver's own files, as bit rot at the
   * server would (the object keeps its ETag).
   */
  overwrite(location: string, target: { generation: number; offset: number } | { blob: string; offset: number }, bytes: Buffer): void;
  /** Stops the server (SIGKILL); `start()` brings it back on the same port with the same data. */
  kill(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

function launch(dir: string, port: number): Promise<{ child: ChildProcess; port: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--openssl-legacy-provider", SCRIPT, dir, String(port), BUCKET], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d;
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve({ child, port: JSON.parse(out.slice(0, nl)).port });
    });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => (err += d));
    child.on("exit", (code) => reject(new Error(`s3rver exited with ${code}: ${err}`)));
  });
}

/** Starts s3rver in a temp directory on a free port. */
export async function startS3(): Promise<S3Server> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-s3-"));
  let { child, port } = await launch(dir, 0);
  const endpoint = `http://127.0.0.1:${port}`;
  const killed = (c: ChildProcess, signal: NodeJS.Signals) =>
    new Promise<void>((resolve) => {
      if (c.exitCode !== null || c.signalCode !== null) return resolve();
      c.removeAllListeners("exit");
      c.once("exit", () => resolve());
      c.kill(signal);
    });
  return {
    dir,
    port,
    endpoint,
    location: (prefix = randomBytes(6).toString("hex")) =>
      `s3://${BUCKET}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&region=us-east-1&forcePathStyle=true`,
    has: (key) => fs.existsSync(path.join(dir, BUCKET, `${key}._S3rver_object`)),
    keys(prefix) {
      const root = path.join(dir, BUCKET, prefix);
      if (!fs.existsSync(root)) return [];
      return (fs.readdirSync(root, { recursive: true }) as string[])
        .filter((f) => f.endsWith("._S3rver_object"))
        .map((f) => `${prefix}/${f.slice(0, -"._S3rver_object".length)}`)
        .sort();
    },
    overwrite(location, target, bytes) {
      const prefix = decodeURIComponent(new URL(location).pathname).replace(/^\/+|\/+$/g, "");
      const file = (key: string) => path.join(dir, BUCKET, `${prefix}/${key}._S3rver_object`);
      let at = target.offset;
      let object: string;
      if ("generation" in target) {
        const root = `log/${String(target.generation).padStart(10, "0")}`;
        const keys = fs.readdirSync(path.join(dir, BUCKET, prefix, root)).filter((f) => f.endsWith("._S3rver_object")).sort();
        object = "";
        for (const k of keys) {
          const size = fs.statSync(path.join(dir, BUCKET, prefix, root, k)).size;
          object = `${root}/${k.slice(0, -"._S3rver_object".length)}`;
          if (at < size) break;
          at -= size;
        }
      } else {
        object = `snapshots/${target.blob}`;
      }
      const fd = fs.openSync(file(object), "r+");
      try {
        fs.writeSync(fd, bytes, 0, bytes.length, at);
      } finally {
        fs.closeSync(fd);
      }
    },
    kill: () => killed(child, "SIGKILL"),
    async start() {
      ({ child } = await launch(dir, port));
    },
    async stop() {
      await killed(child, "SIGTERM");
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
