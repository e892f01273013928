/**
 * The write-ahead version rules from DESIGN.md, implemented once for every entry point.
 *
 * | case                          | action                       |
 * |-------------------------------|------------------------------|
 * | v == h+1                      | append                       |
 * | v == h (h rewindable)         | redo: replace h (one record) |
 * | v > h, carrying a snapshot    | append as a new base         |
 * | v > h+1, no snapshot          | GapError                     |
 * | v < h, or v == h after a rewind | StaleError                 |
 *
 * A continuation (a change flagged as continuing the head version: statements the host
 * committed without a new version) is appended when v == h, and otherwise refused the same
 * way. Once h has a continuation, h was committed, so a plain change at v == h is stale.
 */
import { GapError, InputError, StaleError } from "../util/errors.js";

/** Where a backup stands, as far as the version rules are concerned. */
export interface BackendHead {
  /** Version of the newest live change; 0 when the backup holds no change. */
  readonly version: number;
  /**
   * The version a rewind would return to, or null when rewind is not allowed: the backup is
   * empty, or its last operation was a rewind (only the last change can be rewound, and once).
   * It equals `version` when the last record is a continuation of `version`: a rewind removes
   * that record only.
   */
  readonly prevVersion: number | null;
}

/**
 * Whether a stored change of `version` may follow a head at `head`: the next version, or any
 * later one when it carries a snapshot (a new base); a continuation, the head version itself.
 * Every log is checked against this.
 */
export function canFollow(head: number, version: number, isBase: boolean, continuation = false): boolean {
  if (continuation) return !isBase && head > 0 && version === head;
  return isBase ? version > head : version === head + 1;
}

/** What to do with an incoming change. */
export type Action = "append" | "rewind-then-append" | "new-base" | "append-continuation";

/** Decides what an incoming change means for a backup at `head`. Throws GapError or StaleError. */
export function decide(head: BackendHead, change: { readonly version: number; readonly hasSnapshot: boolean; readonly continuation?: boolean }): Action {
  const h = head.version;
  const v = change.version;
  if (change.continuation) {
    if (change.hasSnapshot) throw new InputError(`change ${v}: a continuation carries statements only, not a snapshot`);
    if (v === h && h > 0) return "append-continuation";
    if (v > h) throw new GapError(h, v, `change ${v} continues version ${v}, but the backup head is ${h}: the backup misses version ${v}`);
    throw new StaleError(h, v, `change ${v} continues version ${v}, but the backup head is ${h}: the host lost committed state`);
  }
  if (v === h) {
    if (head.prevVersion === h) {
      throw new StaleError(h, v, `change ${v} repeats version ${h}, which the host committed (a continuation of it is stored): the host lost committed state`);
    }
    if (head.prevVersion !== null) {
      // The redo follows the change before the head: without a snapshot, only as its next version.
      if (!change.hasSnapshot && v !== head.prevVersion + 1) {
        throw new GapError(head.prevVersion, v, `change ${v} redoes version ${v}, which was stored with a snapshot after version ${head.prevVersion}: a redo without a snapshot would leave a gap`);
      }
      return "rewind-then-append";
    }
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
