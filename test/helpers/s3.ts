/**
 * S3 servers for the tests: s3rver on 127.0.0.1, as a child process the tests control, and an
 * external server named by the environment (the radosgw that `.ci/run` brings up with
 * `test/fixtures/rgw/rgw-up.sh`, or MinIO, R2, AWS):
 *
 *   TIDEMARK_TEST_S3_ENDPOINT           e.g. http://127.0.0.1:17480 (unset: AWS itself)
 *   TIDEMARK_TEST_S3_ACCESS_KEY_ID      the keys (they become AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
 *   TIDEMARK_TEST_S3_SECRET_ACCESS_KEY  of the test process and the CLIs it runs)
 *   TIDEMARK_TEST_S3_BUCKET             default tidemark-test, created when missing
 *   TIDEMARK_TEST_S3_REGION             default us-east-1
 *   TIDEMARK_TEST_S3_NAME               a label for test names, default "external"
 *
 * Each test uses a fresh random prefix; nothing outside it is touched. A test file uses one
 * server: the keys are process-wide.
 *
 * `startS3()` starts s3rver; with TIDEMARK_TEST_S3=external it returns the external server
 * instead, so the same S3 test files run against both (`.ci/run` does: s3rver in `npm test`,
 * then radosgw). Tests that stop the server run on s3rver only ({@link S3_RESTARTABLE}).
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";

const SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/s3rver.mjs");
export const BUCKET = "tidemark-test";

function useKeys(id: string, secret: string, region: string): void {
  // The SDK's default provider chain reads these, in this process and in the CLIs it spawns.
  process.env.AWS_ACCESS_KEY_ID = id;
  process.env.AWS_SECRET_ACCESS_KEY = secret;
  process.env.AWS_REGION = region;
  delete process.env.AWS_PROFILE;
}

/** True when this run's S3 tests use the external server (TIDEMARK_TEST_S3=external). */
export const EXTERNAL_S3 = process.env.TIDEMARK_TEST_S3 === "external";
/** Whether the tests can stop and restart this run's S3 server (s3rver, not an external one). */
export const S3_RESTARTABLE = !EXTERNAL_S3;

/** A running S3 server. */
export interface S3Server {
  /** "s3rver", or the external server's label. */
  readonly name: string;
  readonly endpoint: string;
  /** A location for a fresh backup under a random prefix. */
  location(prefix?: string): string;
  /** Whether an object exists. */
  has(key: string): Promise<boolean>;
  /** Keys under a prefix, sorted. */
  keys(prefix: string): Promise<string[]>;
  /**
   * Overwrites bytes of a stored log or blob, as bit rot at the server would: in place in
   * s3rver's files (the object keeps its ETag); by a re-PUT on an external server.
   */
  overwrite(location: string, target: { generation: number; offset: number } | { blob: string; offset: number }, bytes: Buffer): Promise<void>;
  /** Writes an object behind tidemark's back (a key relative to the bucket). */
  putObject(key: string, body: string | Buffer): Promise<void>;
  /** Reads an object, or undefined when there is none. */
  getObject(key: string): Promise<Buffer | undefined>;
  /** Stops the server (SIGKILL); `start()` brings it back on the same port with the same data. s3rver only. */
  kill(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** The external server the environment names, or null when TIDEMARK_TEST_S3_ACCESS_KEY_ID is unset. */
export async function externalS3(): Promise<S3Server | null> {
  const env = process.env;
  const id = env.TIDEMARK_TEST_S3_ACCESS_KEY_ID;
  const secret = env.TIDEMARK_TEST_S3_SECRET_ACCESS_KEY;
  if (!id || !secret) return null;
  const endpoint = env.TIDEMARK_TEST_S3_ENDPOINT ?? "";
  const bucket = env.TIDEMARK_TEST_S3_BUCKET ?? BUCKET;
  const region = env.TIDEMARK_TEST_S3_REGION ?? "us-east-1";
  useKeys(id, secret, region);
  const client = sdkClient(endpoint, id, secret, region);
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (err) {
    if (!["BucketAlreadyOwnedByYou", "BucketAlreadyExists"].includes((err as Error).name)) throw err;
  }
  const list = async (prefix: string) => {
    const out: { key: string; size: number }[] = [];
    let token: string | undefined;
    do {
      const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token && { ContinuationToken: token }) }));
      for (const c of page.Contents ?? []) out.push({ key: c.Key!, size: c.Size ?? 0 });
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort((a, b) => (a.key < b.key ? -1 : 1));
  };
  const query = `${endpoint ? `endpoint=${encodeURIComponent(endpoint)}&forcePathStyle=true&` : ""}region=${region}`;
  return {
    name: env.TIDEMARK_TEST_S3_NAME ?? "external",
    endpoint,
    location: (prefix = randomBytes(6).toString("hex")) => `s3://${bucket}/${prefix}?${query}`,
    has: async (key) => (await list(key)).some((o) => o.key === key),
    keys: async (prefix) => (await list(`${prefix}/`)).map((o) => o.key),
    async overwrite(location, target, bytes) {
      const prefix = decodeURIComponent(new URL(location).pathname).replace(/^\/+|\/+$/g, "");
      let at = target.offset;
      let key = `${prefix}/snapshots/${"blob" in target ? target.blob : ""}`;
      if ("generation" in target) {
        for (const o of await list(`${prefix}/log/${String(target.generation).padStart(10, "0")}/`)) {
          key = o.key;
          if (at < o.size) break;
          at -= o.size;
        }
      }
      const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      const body = Buffer.from(await res.Body!.transformToByteArray());
      bytes.copy(body, at);
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    },
    ...objectAccess(client, bucket),
    kill: () => Promise.reject(new Error("an external S3 server cannot be killed by the tests")),
    start: () => Promise.reject(new Error("an external S3 server cannot be started by the tests")),
    async stop() {
      client.destroy();
    },
  };
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

function sdkClient(endpoint: string, id: string, secret: string, region: string): S3Client {
  return new S3Client({
    region,
    ...(endpoint && { endpoint, forcePathStyle: true }),
    credentials: { accessKeyId: id, secretAccessKey: secret },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

function objectAccess(client: S3Client, bucket: string): Pick<S3Server, "putObject" | "getObject"> {
  return {
    async putObject(key, body) {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    },
    async getObject(key) {
      try {
        const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        return Buffer.from(await res.Body!.transformToByteArray());
      } catch (err) {
        if ((err as Error).name === "NoSuchKey" || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
        throw err;
      }
    },
  };
}

/** This run's S3 server: s3rver in a temp directory on a free port, or the external one. */
export async function startS3(): Promise<S3Server> {
  if (EXTERNAL_S3) {
    const server = await externalS3();
    if (!server) throw new Error("TIDEMARK_TEST_S3=external, but TIDEMARK_TEST_S3_ACCESS_KEY_ID/TIDEMARK_TEST_S3_SECRET_ACCESS_KEY are not set");
    return server;
  }
  // s3rver accepts exactly these keys.
  useKeys("S3RVER", "S3RVER", "us-east-1");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-s3-"));
  let { child, port } = await launch(dir, 0);
  const endpoint = `http://127.0.0.1:${port}`;
  const client = sdkClient(endpoint, "S3RVER", "S3RVER", "us-east-1");
  const killed = (c: ChildProcess, signal: NodeJS.Signals) =>
    new Promise<void>((resolve) => {
      if (c.exitCode !== null || c.signalCode !== null) return resolve();
      c.removeAllListeners("exit");
      c.once("exit", () => resolve());
      c.kill(signal);
    });
  return {
    name: "s3rver",
    endpoint,
    location: (prefix = randomBytes(6).toString("hex")) =>
      `s3://${BUCKET}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&region=us-east-1&forcePathStyle=true`,
    has: async (key) => fs.existsSync(path.join(dir, BUCKET, `${key}._S3rver_object`)),
    async keys(prefix) {
      const root = path.join(dir, BUCKET, prefix);
      if (!fs.existsSync(root)) return [];
      return (fs.readdirSync(root, { recursive: true }) as string[])
        .filter((f) => f.endsWith("._S3rver_object"))
        .map((f) => `${prefix}/${f.slice(0, -"._S3rver_object".length)}`)
        .sort();
    },
    async overwrite(location, target, bytes) {
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
    ...objectAccess(client, BUCKET),
    kill: () => killed(child, "SIGKILL"),
    async start() {
      ({ child } = await launch(dir, port));
    },
    async stop() {
      client.destroy();
      await killed(child, "SIGTERM");
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
