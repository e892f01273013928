/**
 * The systemd units and the daemon's readiness notification.
 *
 * `systemd-analyze verify` and `systemd-analyze security` run when systemd-analyze is installed
 * (.ci/run installs it on Debian); the unit's content is checked either way. Readiness is
 * checked for real: the daemon runs systemd-notify(1) against a stand-in notification socket
 * (test/fixtures/notify-socket.py), which answers systemd-notify's barrier as the manager does.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { CLI } from "../helpers/cli.js";
import { request, startDaemon, waitFor } from "../helpers/daemon.js";
import { tmpDir } from "../helpers/tmp.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const UNITS = ["tidemark.service", "tidemark@.service"];
const MAX_EXPOSURE = 2.0;

const unit = (name: string) => fs.readFileSync(path.join(ROOT, "systemd", name), "utf8");
const directives = (text: string) => text.split("\n").filter((l) => /^[A-Z]\w*=/.test(l));
const hasSystemdAnalyze = spawnSync("systemd-analyze", ["--version"]).status === 0;

/**
 * A copy of the unit in a temp dir whose ExecStart runs this checkout's build: verify checks
 * that the command exists, and /usr/local/bin/tidemark is only there once installed.
 */
function installable(name: string, dir: string, as = name): string {
  const file = path.join(dir, as);
  fs.writeFileSync(file, unit(name).replace("ExecStart=/usr/local/bin/tidemark ", `ExecStart=${CLI} `));
  return file;
}

describe("systemd units", () => {
  it.each(UNITS)("%s is hardened, restarts on failure and reports readiness", (name) => {
    const lines = directives(unit(name));
    for (const required of [
      "Type=notify",
      "NotifyAccess=all",
      "Restart=on-failure",
      "DynamicUser=yes",
      "ProtectSystem=strict",
      "ProtectHome=yes",
      "NoNewPrivileges=yes",
      "PrivateTmp=yes",
      "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
      "SystemCallFilter=@system-service",
      "SystemCallArchitectures=native",
      "CapabilityBoundingSet=",
      "UMask=0077",
    ]) {
      expect(lines, required).toContain(required);
    }
    expect(lines.some((l) => l.startsWith("StateDirectory=tidemark"))).toBe(true);
    expect(lines.some((l) => l.startsWith("RuntimeDirectory=tidemark"))).toBe(true);
    // V8 compiles to executable memory: this setting would kill the daemon at start.
    expect(lines.some((l) => l.startsWith("MemoryDenyWriteExecute="))).toBe(false);
  });

  it("the template differs from the single unit only in what the instance name picks", () => {
    const single = directives(unit("tidemark.service"));
    const template = directives(unit("tidemark@.service"));
    const differing = template.filter((l) => !single.includes(l));
    expect(differing).toEqual([
      "Description=tidemark SQLite changelog backup daemon (%i)",
      "ExecStart=/usr/local/bin/tidemark daemon --config /etc/tidemark/%i.yaml",
      "User=tidemark-%i",
      "Group=tidemark-%i",
      "StateDirectory=tidemark-%i",
      "RuntimeDirectory=tidemark-%i",
    ]);
    expect(template.length).toBe(single.length);
  });

  it("the example configuration is valid and puts everything in the service's directories", () => {
    const out = execFileSync(process.execPath, [CLI, "daemon", "--config", path.join(ROOT, "systemd/tidemark.yaml"), "--check"], {
      env: { ...process.env, STATE_DIRECTORY: "/var/lib/tidemark", RUNTIME_DIRECTORY: "/run/tidemark" },
      encoding: "utf8",
    });
    const config = JSON.parse(out);
    expect(config.socket).toBe("/run/tidemark/tidemark.sock");
    expect(config.spool).toBe("/var/lib/tidemark/spool");
    expect(config.tmpDir).toBe("/var/lib/tidemark/tmp");
    expect(config.databases.map((d: { backend: string }) => d.backend)).toEqual(["/var/lib/tidemark/default"]);
  });

  it.each([
    ["a bad S3 URL", { backend: "s3://bucket/prefix?regoin=eu-west-1" }, /^Error: databases\[0\]\.backend: unknown parameter "regoin" in s3:\/\/bucket\/prefix$/m],
    ["credentials in a replica URL", { backend: "data/a", replicas: ["s3://AKIA:secret@bucket/p"] }, /^Error: databases\[0\]\.replicas\[0\]: credentials do not go in the URL/m],
    ["a backend nobody installed", { backend: "ftp://host/backup" }, /^Error: databases\[0\]\.backend: no backend for "ftp:" URLs/m],
    ["a rules file that is not there", { backend: "data/a", rules: "/nonexistent/rules.json" }, /^Error: databases\[0\]\.rules: /m],
  ])("--check refuses %s, naming the field, without opening anything", (_name, db, message) => {
    const dir = tmpDir();
    const file = path.join(dir, "tidemark.yaml");
    fs.writeFileSync(file, JSON.stringify({ socket: "t.sock", databases: [{ name: "a", ...db }] }));
    const r = spawnSync(process.execPath, [CLI, "daemon", "--config", file, "--check"], { encoding: "utf8" });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toContain("secret");
    expect(fs.readdirSync(dir)).toEqual(["tidemark.yaml"]);
  });

  it.each(UNITS)(`%s passes systemd-analyze verify, and security rates it at most ${MAX_EXPOSURE}`, (name) => {
    if (!hasSystemdAnalyze) {
      console.warn("systemd-analyze is not installed: only the unit's content was checked (apt-get install systemd)");
      return;
    }
    const dir = tmpDir();
    const file = installable(name, dir, name.replace("@.", "@ci."));
    const verify = spawnSync("systemd-analyze", ["verify", file], { encoding: "utf8" });
    expect(verify.stderr + verify.stdout).toBe("");
    expect(verify.status).toBe(0);

    const security = spawnSync("systemd-analyze", ["security", "--offline=true", "--no-pager", file], { encoding: "utf8" });
    const m = /Overall exposure level for \S+: (\d+\.\d)/.exec(security.stdout);
    expect(m, security.stdout + security.stderr).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(MAX_EXPOSURE);
  });
});

describe("readiness through systemd-notify", () => {
  it("says READY=1 once the socket answers, with its main PID, and STOPPING=1 when it drains", async () => {
    const dir = tmpDir();
    const notifySocket = path.join(dir, "notify.sock");
    const manager = spawn("python3", [path.join(ROOT, "test/fixtures/notify-socket.py"), notifySocket], { stdio: ["ignore", "pipe", "inherit"] });
    const messages: string[] = [];
    let buffered = "";
    manager.stdout!.on("data", (d: Buffer) => {
      buffered += d;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = JSON.parse(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
        if (line.message) messages.push(line.message);
      }
    });
    try {
      await waitFor(() => fs.existsSync(notifySocket), 10_000);
      const d = await startDaemon(dir, { databases: [{ name: "a", backend: "data/a" }] }, { NOTIFY_SOCKET: notifySocket });
      // systemd-notify sends READY=1, then its barrier (BARRIER=1 with a descriptor the manager
      // closes): both arrive, the barrier last.
      await waitFor(() => messages.some((m) => m.includes("READY=1")) && messages.includes("BARRIER=1"), 10_000, () => d.logs() + messages.join("\n---\n"));
      const ready = messages.find((m) => m.includes("READY=1"))!.split("\n");
      expect(ready).toContain(`MAINPID=${d.child.pid}`);
      expect(ready).toContain("STATUS=serving 1 database(s)");
      // systemd-notify waited for the manager (its barrier), so the message was attributable.
      expect(messages).toContain("BARRIER=1");
      expect((await request(d.socket, "GET", "/healthz")).status).toBe(200);

      expect(await d.stop()).toBe(0);
      expect(messages.some((m) => m.split("\n").includes("STOPPING=1"))).toBe(true);
    } finally {
      manager.kill("SIGKILL");
    }
  });

  it("serves anyway, with a warning, when the notification cannot be sent", async () => {
    const dir = tmpDir();
    const d = await startDaemon(dir, { databases: [{ name: "a", backend: "data/a" }] }, { NOTIFY_SOCKET: path.join(dir, "nobody-listens.sock") });
    try {
      await waitFor(() => d.logs().includes("could not notify systemd"), 10_000, d.logs);
      expect((await request(d.socket, "GET", "/healthz")).status).toBe(200);
    } finally {
      expect(await d.stop()).toBe(0);
    }
  });
});
