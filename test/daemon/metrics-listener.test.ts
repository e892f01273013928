import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { buildConfig } from "../../src/daemon/config.js";
import { ERROR_CODES } from "../../src/util/errors.js";
import { request, startDaemon, waitFor } from "../helpers/daemon.js";

const pkg = JSON.parse(fs.readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

describe("the metrics-only listener", () => {
  it("serves /metrics without a key and nothing else, with every counter at 0, standard Node names and build info", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-metrics-"));
    const d = await startDaemon(dir, { metrics: { listen: "127.0.0.1:0" }, databases: [{ name: "main", backend: "data/main" }] });
    try {
      const ready = JSON.parse(d.logs().split("\n").find((l) => l.includes('"msg":"ready"'))!);
      const port = Number(/^127\.0\.0\.1:(\d+)$/.exec(ready.metrics)![1]);
      const scrape = async () => {
        const r = await request(port, "GET", "/metrics");
        expect(r.status).toBe(200);
        return r.body.toString();
      };
      const text = await scrape();
      expect(text).toContain(`tidemark_build_info{version="${pkg.version}",node="${process.version}"} 1`);
      for (const code of Object.keys(ERROR_CODES)) expect(text).toContain(`tidemark_errors_total{db="main",code="${code}"} 0`);
      for (const action of ["append", "rewind-then-append", "new-base"]) expect(text).toContain(`tidemark_changes_total{db="main",action="${action}"} 0`);
      expect(text).toContain('tidemark_compactions_total{db="main",result="error"} 0');
      expect(text).toContain('tidemark_verify_total{db="main",result="failed"} 0');
      expect(text).toMatch(/^process_cpu_seconds_total /m);
      expect(text).toMatch(/^nodejs_heap_size_used_bytes /m);
      expect(text).not.toMatch(/tidemark_process_|tidemark_nodejs_/);
      // Only /metrics: no status, no data, no page.
      for (const p of ["/", "/v1/dbs", "/v1/dbs/main/backup", "/healthz"]) expect((await request(port, "GET", p)).status, p).toBe(404);
      // The first error moves its counter from 0 to 1.
      await request(d.socket, "POST", "/v1/dbs/main/changes", JSON.stringify({ version: 3, transaction: ["SELECT 1"] }));
      await waitFor(async () => (await scrape()).includes('tidemark_errors_total{db="main",code="E_GAP"} 1'));
    } finally {
      expect(await d.stop()).toBe(0);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("listens on loopback unless told otherwise, and names a bad address", () => {
    const base = { databases: [{ name: "a", backend: "/tmp/x" }] };
    expect(buildConfig({ ...base, metrics: { listen: 9090 } }, "/", "t").metrics).toEqual({ host: "127.0.0.1", port: 9090 });
    expect(buildConfig({ ...base, metrics: { listen: "9090" } }, "/", "t").metrics).toEqual({ host: "127.0.0.1", port: 9090 });
    expect(buildConfig({ ...base, metrics: { listen: "0.0.0.0:9100" } }, "/", "t").metrics).toEqual({ host: "0.0.0.0", port: 9100 });
    expect(buildConfig({ ...base, metrics: { listen: "[::1]:9100" } }, "/", "t").metrics).toEqual({ host: "::1", port: 9100 });
    expect(() => buildConfig({ ...base, metrics: { listen: "localhost:http" } }, "/", "t")).toThrow(/^metrics\.listen: expected "PORT" or "HOST:PORT"/);
  });
});
