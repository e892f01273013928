/**
 * The group that may use the daemon's socket and spool (`group:` in the config), so that a host
 * running as another, non-root user can reach them without TCP. Without it, both are the
 * daemon user's alone: the socket 0600, the spool's directories 0700.
 *
 * With it, the socket is 0660 and the spool's directories 2770 (setgid: what a host creates in
 * them keeps the group), all of that group. The daemon must be a member of the group (or root)
 * to give its files to it: under systemd, `SupplementaryGroups=`.
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { ConfigError } from "../util/errors.js";

/** A group resolved at config load. */
export interface AccessGroup {
  /** As given in the config (a name, or a number). */
  readonly name: string;
  readonly gid: number;
}

/** Modes with and without an access group. */
export const SOCKET_MODE = { private: 0o600, group: 0o660 } as const;
export const SPOOL_DIR_MODE = { private: 0o700, group: 0o2770 } as const;
/** The `.reason` files the spool writes: the host that sent the file may read why it was refused. */
export const SPOOL_FILE_MODE = { private: 0o600, group: 0o640 } as const;

/**
 * Resolves `group` (a name or a gid) through the system's group database (getent, so that
 * LDAP and other NSS groups count too; /etc/group where getent is missing). An unknown name is
 * an E_CONFIG error at `where`.
 */
export function resolveGroup(group: string | number, where: string): AccessGroup {
  if (typeof group === "number") return { name: String(group), gid: group };
  if (/^\d+$/.test(group)) return { name: group, gid: Number(group) };
  const gid = lookUp(group);
  if (gid === undefined) {
    throw new ConfigError(where, `no group named "${group}" on this host`, {
      hint: `create it (groupadd ${group}) and add the host's user to it, give a group number, or remove ${where}`,
    });
  }
  return { name: group, gid };
}

function lookUp(name: string): number | undefined {
  let line: string;
  try {
    line = execFileSync("getent", ["group", name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  } catch (err) {
    // getent exits 2 for a name it does not know; a host without getent reads /etc/group.
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") return undefined;
    line = fs.readFileSync("/etc/group", "utf8").split("\n").find((l) => l.split(":")[0] === name) ?? "";
  }
  const gid = Number(line.split(":")[2]);
  return line.startsWith(`${name}:`) && Number.isInteger(gid) ? gid : undefined;
}

/** Gives `file` to `group` (when there is one) and sets its mode: the group's, or the private one. */
export function applyAccess(file: string, group: AccessGroup | undefined, modes: { readonly private: number; readonly group: number }): void {
  // The group first, then the mode: the file is never open to the group it had before.
  if (group) fs.chownSync(file, -1, group.gid);
  fs.chmodSync(file, group ? modes.group : modes.private);
}
