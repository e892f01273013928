/**
 * The write-ahead version rules from DESIGN.md, implemented once for every entry point.
 *
 * | case                          | action                       |
 * |-------------------------------|------------------------------|
 * | v == h+1                      | append                       |
 * | v == h (h rewindable)         | rewind h, then append        |
 * | v > h, carrying a snapshot    | append as a new base         |
 * | v > h+1, no snapshot          | GapError                     |
 * | v < h, or v == h after a rewind | StaleError                 |
 */
import type { BackendHead } from "./backend.js";
import { GapError, StaleError } from "./errors.js";

/** What to do with an incoming change. */
export type Action = "append" | "rewind-then-append" | "new-base";

/** Decides what an incoming change means for a backup at `head`. Throws GapError or StaleError. */
export function decide(head: BackendHead, change: { readonly version: number; readonly hasSnapshot: boolean }): Action {
  const h = head.version;
  const v = change.version;
  if (v === h) {
    if (head.prevVersion !== null) return "rewind-then-append";
    throw new StaleError(h, v, `change ${v} repeats version ${h}, which was already rewound once: the host lost committed state`);
  }
  if (v > h) {
    if (change.hasSnapshot) return "new-base";
    if (v === h + 1) return "append";
    throw new GapError(h, v);
  }
  throw new StaleError(h, v);
}

/** What a host must do at start-up. */
export type Reconciliation = "in-sync" | "rewind";

/**
 * Compares a host's committed version with the backup head at start-up: equal is in sync; a
 * backup one ahead (the host died between the ack and its commit) is rewound; anything else
 * stops the host with GapError or StaleError.
 */
export function reconcile(hostVersion: number, head: BackendHead): Reconciliation {
  const h = head.version;
  if (hostVersion === h) return "in-sync";
  if (h === hostVersion + 1 && head.prevVersion === hostVersion) return "rewind";
  if (hostVersion > h) {
    throw new GapError(h, hostVersion, `the host is at version ${hostVersion} but the backup head is ${h}: the backup misses changes`);
  }
  throw new StaleError(
    h,
    hostVersion,
    `the host is at version ${hostVersion} but the backup head is ${h}: the host lost committed state`,
  );
}
