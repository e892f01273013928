import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { buildConfig, defaultConfig, loadConfigFile } from "../../src/daemon/config.js";
import { ConfigError } from "../../src/util/errors.js";
import { tmpDir } from "../helpers/tmp.js";
import { request, startDaemon } from "../helpers/daemon.js";

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error("expected a ConfigError");
}

describe("config", () => {
  it("shadowDir is optional, resolved against the config file; the daemon creates it 0700 and keeps its shadows there", async () => {
    expect(buildConfig({ databases: [{ name: "a", backend: "a" }] }, "/srv", "test").shadowDir).toBeUndefined();
    expect(buildConfig({ shadowDir: "state/shadows", databases: [{ name: "a", backend: "a" }] }, "/srv", "test").shadowDir).toBe("/srv/state/shadows");
    expect(configError(() => buildConfig({ shadowDir: "", databases: [{ name: "a", backend: "a" }] }, "/srv", "test")).message).toMatch(/shadowDir/);

    const dir = tmpDir();
    const elsewhere = path.join(dir, "env-shadows");
    const d = await startDaemon(dir, { shadowDir: "state/shadows", databases: [{ name: "default", backend: "data" }] }, { TIDEMARK_SHADOW_DIR: elsewhere });
    try {
      const shadows = path.join(dir, "state/shadows");
      expect(fs.statSync(shadows).mode & 0o777).toBe(0o700);
      const r = await request(d.socket, "POST", "/v1/dbs/default/changes", JSON.stringify({ version: 1, transaction: ["CREATE TABLE t (x)"] }));
      expect(r.status, r.body.toString()).toBe(200);
      expect(fs.readdirSync(shadows).filter((n) => n.endsWith(".db"))).toHaveLength(1);
      expect(fs.existsSync(elsewhere)).toBe(false);
    } finally {
      expect(await d.stop()).toBe(0);
    }
  });

  it("the embedded default serves one database from ./tidemark-data/default on ./tidemark.sock", () => {
    const c = defaultConfig("/srv/app");
    expect(c.socket).toBe("/srv/app/tidemark.sock");
    expect(c.databases).toEqual([
      expect.objectContaining({ name: "default", backend: "/srv/app/tidemark-data/default", create: true, rules: "none" }),
    ]);
    expect(Object.isFrozen(c.databases[0])).toBe(true);
  });

  it("reads YAML with ${ENV} secrets and paths relative to the file", () => {
    const dir = tmpDir();
    const file = path.join(dir, "tidemark.yaml");
    fs.writeFileSync(
      file,
      [
        "socket: run/tidemark.sock",
        "tcp:",
        "  port: 8787",
        "  apiKey: ${TM_KEY}",
        "spool: spool",
        "maxChangeBytes: 1MiB",
        "databases:",
        "  - name: ledger",
        "    backend: data/ledger",
        "    rules: core-lightning",
        "    compaction: { everyChanges: 5000, every: 30m, logRatio: 2 }",
        "  - name: s3db",
        "    backend: s3://bucket/prefix?region=eu-west-1",
      ].join("\n"),
    );
    const c = loadConfigFile(file, { TM_KEY: "sekret" });
    expect(c.socket).toBe(path.join(dir, "run/tidemark.sock"));
    expect(c.tcp).toEqual({ host: "127.0.0.1", port: 8787, apiKey: "sekret" });
    expect(c.spool).toBe(path.join(dir, "spool"));
    expect(c.maxChangeBytes).toBe(1024 * 1024);
    expect(c.databases[0]).toMatchObject({
      backend: path.join(dir, "data/ledger"),
      rules: "core-lightning",
      compaction: { everyChanges: 5000, everyMs: 30 * 60_000, logRatio: 2 },
    });
    expect(c.databases[1]!.backend).toBe("s3://bucket/prefix?region=eu-west-1");
  });

  it.each([
    [{ databases: [] }, /^databases: expected at least one database/],
    [{ databases: [{ name: "Bad Name", backend: "x" }] }, /^databases\[0\]\.name: .*a-z.*, got "Bad Name"/],
    [{ databases: [{ name: "../etc", backend: "x" }] }, /^databases\[0\]\.name: /],
    [{ databases: [{ name: "rejected", backend: "x" }] }, /databases\[0\]\.name: this name is reserved/],
    [{ databases: [{ name: "a", backend: "x" }, { name: "a", backend: "y" }] }, /databases\[1\]\.name: "a" is used twice/],
    [{ databases: [{ name: "a", backend: "x", compaction: { every: "soon" } }] }, /databases\[0\]\.compaction\.every: .*duration/],
    [{ databases: [{ name: "a", backend: "x", colour: "red" }] }, /databases\[0\]\.colour: unknown field "colour"/],
    [{ databases: [{ name: "a", backend: "x" }], tcp: { port: 80 } }, /tcp\.apiKey: TCP is enabled but no API key is set/],
    [{ databases: [{ name: "a", backend: "x" }], tcp: { port: 99999, apiKey: "k" } }, /tcp\.port: /],
  ])("rejects %j with the field path", (raw, message) => {
    expect(configError(() => buildConfig(raw, "/x", "test")).message).toMatch(message);
  });

  it("names a missing environment variable and never echoes a secret", () => {
    const err = configError(() => buildConfig({ databases: [{ name: "a", backend: "x" }], tcp: { port: 1, apiKey: "${NOPE}" } }, "/x", "t", {}));
    expect(err.message).toBe("tcp.apiKey: environment variable NOPE is not set");
    const secret = configError(() => buildConfig({ databases: [{ name: "a", backend: "x" }], tcp: { port: 1, apiKey: 12345 } }, "/x", "t", {}));
    expect(secret.message).toMatch(/^tcp\.apiKey: /);
    expect(secret.message).not.toContain("12345");
  });

  it("reports a file that does not parse, and one that is missing", () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "bad.yaml"), "databases: [\n");
    expect(configError(() => loadConfigFile(path.join(dir, "bad.yaml"))).message).toMatch(/does not parse/);
    fs.writeFileSync(path.join(dir, "bad.json"), "{");
    expect(configError(() => loadConfigFile(path.join(dir, "bad.json"))).message).toMatch(/does not parse/);
    expect(configError(() => loadConfigFile(path.join(dir, "none.yaml"))).message).toMatch(/cannot read config file .*ENOENT/);
  });
});
