/**
 * Readiness for systemd (`Type=notify`).
 *
 * Node cannot send a datagram on a Unix socket, so the notification goes through
 * systemd-notify(1). That helper waits until the manager has processed the message (its
 * default, unless --no-block), so the message is still attributed to this service's cgroup,
 * which is what `NotifyAccess=all` checks. Without `NOTIFY_SOCKET` in the environment (not
 * under systemd, or not `Type=notify`) nothing is sent.
 */
import { execFile } from "node:child_process";
import type { Logger } from "../util/logger.js";

/** How long systemd-notify may take before the daemon gives up on it. */
const NOTIFY_TIMEOUT_MS = 10_000;

/**
 * Sends `fields` (READY=1, STATUS=…, STOPPING=1) to the service manager, with MAINPID set to
 * this process. Resolves to whether the manager took it; a failure is logged, never thrown:
 * readiness is the manager's business, and the daemon serves either way.
 */
export function notifySystemd(fields: Record<string, string>, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  if (!env.NOTIFY_SOCKET) return Promise.resolve(false);
  const args = Object.entries({ MAINPID: String(process.pid), ...fields }).map(([k, v]) => `${k}=${v}`);
  return new Promise((resolve) => {
    execFile("systemd-notify", args, { env, timeout: NOTIFY_TIMEOUT_MS }, (err, _stdout, stderr) => {
      if (err) {
        log.warn({ fields: Object.keys(fields), error: stderr.trim() || err.message }, "could not notify systemd (is systemd-notify installed?)");
        resolve(false);
      } else {
        resolve(true);
      }
    });
  });
}
