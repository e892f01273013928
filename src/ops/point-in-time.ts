/**
 * Point in time: which version a backup held at a moment, for `restore --time`.
 */
import type { Backend, BackendStatus } from "../backup/backup.js";
import { TidemarkError } from "../util/errors.js";

/**
 * The version as of `time` (ms since the epoch): the last change before the first one made
 * after `time`. Throws E_RANGE, listing the times held, for a moment before the oldest
 * restore point.
 */
export async function versionAt(backend: Backend, time: number): Promise<number> {
  const status = await backend.status();
  if (status.version === 0) throw new TidemarkError("E_RANGE", `${backend.location} is empty: it holds no moment to restore`);
  const gens = status.generations;
  const unknown = gens.find((g) => g.firstTimestamp === undefined);
  if (unknown) {
    throw new TidemarkError("E_KEY", `the times of ${backend.location} are encrypted (generation from version ${unknown.firstVersion})`, {
      hint: "give the decryption keys (--decrypt-key ID=file:PATH) to restore by time",
    });
  }
  const oldest = gens[0]!;
  if (time < oldest.firstTimestamp!) {
    throw new TidemarkError(
      "E_RANGE",
      `${iso(time)} is before the oldest restore point of ${backend.location}: it holds ${iso(oldest.firstTimestamp!)} (version ${oldest.firstVersion}) to ${iso(status.headTimestamp ?? 0)} (version ${status.version})`,
      { hint: `pick a time from ${iso(oldest.firstTimestamp!)} on, or keep more history (--keep-for, --keep-bases)` },
    );
  }
  // The newest generation that starts at or before the time holds it.
  const g = gens.findLast((x) => x.firstTimestamp! <= time)!;
  let version = g.firstVersion;
  for await (const change of backend.streamChanges({ from: g.firstVersion, to: g.lastVersion })) {
    if (change.version < g.firstVersion) continue;
    if (change.timestamp > time) break;
    version = change.version;
  }
  // The time may fall after the damage, in changes that cannot be read.
  if (version === status.version) refuseDamagedHead(status, `the version as of ${iso(time)}`);
  return version;
}

/**
 * Refuses to take the last readable change of a damaged backup for its head (or for the
 * version as of a time after it): what came after the damage is unknown. Versions up to it
 * restore with an explicit --version.
 */
export function refuseDamagedHead(status: BackendStatus, what: string): void {
  const d = status.damage;
  if (!d) return;
  throw new TidemarkError("E_CORRUPT", `${d.message}; ${what} is unknown, because nothing after version ${d.intactVersion} can be read`, {
    hint:
      d.intactVersion > 0
        ? `tidemark restore --version ${d.intactVersion} (or earlier) restores what precedes the damage; for the rest, use a replica or a copy`
        : "nothing before the damage is held here: restore from a replica or a copy",
  });
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
