import http from "node:http";
import https from "node:https";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openBackend } from "../../src/backup/registry.js";
import { restore } from "../../src/ops/restore.js";
import { backendConformance } from "../helpers/backend-conformance.js";
import { EXTERNAL_S3, startS3, type S3Server } from "../helpers/s3.js";
import { rows } from "../helpers/sqlite.js";
import { tmpDir } from "../helpers/tmp.js";

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3.stop();
});

// On s3rver, which ignores conditional PUTs, the lease still refuses a second writer that
// starts while the first holds it (tested here), but not two that race (see s3-lease.test.ts);
// on a server that honours them (radosgw in .ci/run), both.
backendConformance(EXTERNAL_S3 ? `s3 (${process.env.TIDEMARK_TEST_S3_NAME ?? "external"})` : "s3 (s3rver)", {
  newLocation: () => s3.location(),
  exclusiveWriter: true,
  overwrite: (location, target, bytes) => s3.overwrite(location, target, bytes),
});

describe("S3 backend: a restore's requests", () => {
  it("GETs each log object once: the open's scan keeps them for the stream that follows", async () => {
    const location = s3.location();
    const writer = await openBackend(location, { mode: "create" });
    await writer.addChanges([{ version: 1, timestamp: 1, transaction: ["CREATE TABLE t (x INTEGER)"] }]);
    // One object per append.
    for (let v = 2; v <= 40; v++) await writer.addChanges([{ version: v, timestamp: v, transaction: [`INSERT INTO t VALUES (${v})`] }]);
    await writer.close();
    // The requests the SDK sends to the server, counted where they leave this process (http or
    // https, whichever the endpoint is).
    const logGets: string[] = [];
    const originals = [http, https].map((mod) => {
      const request = mod.request;
      (mod as { request: unknown }).request = function (this: unknown, ...args: Parameters<typeof http.request>) {
        const o = args[0] as http.RequestOptions;
        if ((o.method ?? "GET") === "GET" && /\/log\/\d+\/\d+\.tml/.test(o.path ?? "")) logGets.push(o.path!);
        return (request as (...a: unknown[]) => http.ClientRequest).apply(this, args);
      };
      return () => ((mod as { request: unknown }).request = request);
    });
    try {
      const reader = await openBackend(location, { mode: "read" });
      try {
        const out = path.join(tmpDir(), "restored.db");
        await restore(reader, out, { inline: true });
        expect(rows(out, "SELECT x FROM t ORDER BY x")).toEqual(Array.from({ length: 39 }, (_, i) => i + 2));
      } finally {
        await reader.close();
      }
    } finally {
      for (const restoreRequest of originals) restoreRequest();
    }
    expect(logGets).toHaveLength(40);
    expect(new Set(logGets).size).toBe(40);
  });
});
