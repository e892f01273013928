import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { daemonLogger } from "../../src/util/logger.js";
import { CLI } from "../helpers/cli.js";
import { waitFor } from "../helpers/daemon.js";

describe("the daemon's log lines", () => {
  it("start with the syslog priority journald reads, when asked", () => {
    const lines: string[] = [];
    const log = daemonLogger("debug", { priorityPrefix: true, write: (l) => lines.push(l) });
    log.debug({}, "d");
    log.info({ db: "main" }, "i");
    log.warn({}, "w");
    log.error({ err: new Error("boom") }, "e");
    expect(lines.map((l) => l.slice(0, 3))).toEqual(["<7>", "<6>", "<4>", "<3>"]);
    expect(JSON.parse(lines[1]!.slice(3))).toMatchObject({ level: 30, msg: "i", db: "main" });
  });

  it("read as one line each in the text format", () => {
    const lines: string[] = [];
    const log = daemonLogger("info", { format: "text", priorityPrefix: false, write: (l) => lines.push(l) });
    log.warn({ db: "main", status: 409, code: "E_GAP" }, "request refused");
    log.error({ err: new Error("disk full") }, "compaction failed");
    log.debug({}, "not shown");
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z WARN request refused \(db=main status=409 code=E_GAP\)\n$/);
    expect(lines[1]).toMatch(/ ERROR compaction failed error="disk full"\n$/);
  });

  it("carry priorities when the daemon's stdout is the journal stream systemd names in JOURNAL_STREAM", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-journal-"));
    try {
      // A file stands in for journald's stream socket: what matters is that JOURNAL_STREAM names stdout.
      const out = path.join(dir, "stdout");
      const fd = fs.openSync(out, "w");
      const st = fs.fstatSync(fd);
      const child = spawn(process.execPath, [CLI, "daemon"], {
        cwd: dir,
        env: { ...process.env, JOURNAL_STREAM: `${st.dev}:${st.ino}` },
        stdio: ["ignore", fd, fd],
      });
      fs.closeSync(fd);
      const exited = new Promise((resolve) => child.on("exit", resolve));
      await waitFor(() => fs.readFileSync(out, "utf8").includes('"msg":"ready"'), 20_000, () => fs.readFileSync(out, "utf8"));
      child.kill("SIGTERM");
      await exited;
      const lines = fs.readFileSync(out, "utf8").trim().split("\n");
      expect(lines.find((l) => l.includes('"msg":"ready"'))).toMatch(/^<6>\{"level":30,/);
      expect(lines.every((l) => /^<[2-7]>\{/.test(l)), lines.join("\n")).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
