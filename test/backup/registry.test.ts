import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { parseLocation } from "../../src/backup/registry.js";
import { runCli } from "../helpers/cli.js";
import { tmpDir } from "../helpers/tmp.js";

const FILE_BACKEND = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../dist/backends/file.js");

/** Installs a package into `dir/node_modules`. */
function installPackage(dir: string, name: string, source: string): void {
  const pkg = path.join(dir, "node_modules", name);
  fs.mkdirSync(pkg, { recursive: true });
  fs.writeFileSync(path.join(pkg, "package.json"), JSON.stringify({ name, version: "1.0.0", type: "module", main: "index.js" }));
  fs.writeFileSync(path.join(pkg, "index.js"), source);
}

describe("backend registry", () => {
  it("reads bare paths and file: URLs as the file backend", () => {
    expect(parseLocation("./b").href).toBe(pathToFileURL(path.resolve("b")).href);
    expect(parseLocation("file:rel/dir").href).toBe(pathToFileURL(path.resolve("rel/dir")).href);
    expect(parseLocation("file:///abs/dir").pathname).toBe("/abs/dir");
    expect(parseLocation("s3://bucket/prefix?region=x").protocol).toBe("s3:");
  });

  it("loads a third-party backend from the npm package named after the scheme", async () => {
    const dir = tmpDir();
    // A third-party backend that stores its backups with the file backend, under mirror:// URLs:
    // it only stores; the backup on top of it is tidemark's own.
    installPackage(
      dir,
      "tidemark-backend-mirror",
      `import { createStorage as file } from ${JSON.stringify(pathToFileURL(FILE_BACKEND).href)};
export async function createStorage(url, options) {
  const inner = await file(new URL("file://" + url.pathname), options);
  const shown = { kind: "mirror", location: "mirror://" + url.pathname };
  return new Proxy(inner, {
    get: (target, key) => (key in shown ? shown[key] : typeof target[key] === "function" ? target[key].bind(target) : target[key]),
  });
}`
    );
    const backup = path.join(dir, "data", "backup");
    const init = await runCli(["init", `mirror://${backup}`], { cwd: dir });
    expect(init.code, init.stderr).toBe(0);
    expect(fs.existsSync(path.join(backup, "tidemark.json"))).toBe(true);
    const status = await runCli(["status", `mirror://${backup}`], { cwd: dir });
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toContain("(mirror)");
  });

  it("names a package that does not export createStorage", async () => {
    const dir = tmpDir();
    installPackage(dir, "tidemark-backend-broken", "export const nothing = 1;\n");
    const r = await runCli(["status", "broken://x"], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/tidemark-backend-broken does not export a createStorage function/);
  });
});
