/**
 * What an S3-compatible server does with conditional PUTs, found out by trying, and the lease
 * store built on what it does.
 *
 * S3 servers differ here, and a lease or a fence built on a condition the server ignores is no
 * lease at all:
 * - AWS S3, MinIO, R2: `If-None-Match: *` and `If-Match: "<etag>"` (the quoted ETag, as every
 *   response carries it) are honoured.
 * - Ceph RGW (and DigitalOcean Spaces, built on it): `If-None-Match: *` is honoured, but
 *   `If-Match` is compared with the stored ETag *unquoted*; the quoted form always fails.
 * - s3rver and some others ignore both: every PUT succeeds.
 *
 * The probe is a few PUTs of a throw-away object at open, by writers only.
 */
import { randomBytes } from "node:crypto";
import type { LeaseRecord, LeaseStore } from "./s3-lease.js";

/** A condition a PUT carries. */
export interface PutCondition {
  readonly IfNoneMatch?: string;
  readonly IfMatch?: string;
}

/** A PUT of `rel`: resolves to the new ETag as the server returns it, or null on 412. */
export type ConditionalPut = (rel: string, body: string | Buffer, condition: PutCondition) => Promise<string | null>;

/** What the server was found to do. */
export interface Conditions {
  /** `If-None-Match: *` on an existing key is refused (412). */
  readonly ifNoneMatch: boolean;
  /**
   * The ETag form `If-Match` matches: `quoted` (AWS), `unquoted` (Ceph RGW); `ignored` when a
   * wrong ETag is not refused; `refused` when neither form of the current ETag matches.
   */
  readonly ifMatch: "quoted" | "unquoted" | "ignored" | "refused";
}

/** Tries the conditions on a throw-away object `.probe-<random>`, then deletes it. */
export async function probeConditions(put: ConditionalPut, del: (rel: string) => Promise<void>): Promise<Conditions> {
  const rel = `.probe-${randomBytes(6).toString("hex")}`;
  const body = "tidemark probe";
  try {
    let etag = await put(rel, body, { IfNoneMatch: "*" });
    if (etag === null) throw new Error(`the new probe object ${rel} was refused with 412`);
    const again = await put(rel, body, { IfNoneMatch: "*" });
    const ifNoneMatch = again === null;
    etag = again ?? etag;
    // The same body gives the same ETag, so a wrong one is any other.
    if ((await put(rel, body, { IfMatch: '"00000000000000000000000000000000"' })) !== null) return { ifNoneMatch, ifMatch: "ignored" };
    if ((await put(rel, body, { IfMatch: quoted(etag) })) !== null) return { ifNoneMatch, ifMatch: "quoted" };
    if ((await put(rel, body, { IfMatch: unquoted(etag) })) !== null) return { ifNoneMatch, ifMatch: "unquoted" };
    return { ifNoneMatch, ifMatch: "refused" };
  } finally {
    await del(rel).catch(() => {});
  }
}

function quoted(etag: string): string {
  return etag.startsWith('"') ? etag : `"${etag}"`;
}

function unquoted(etag: string): string {
  return etag.replace(/^"|"$/g, "");
}

/** True when writes can be fenced: a PUT of a new key can be made to fail if the key exists. */
export function fences(c: Conditions): boolean {
  return c.ifNoneMatch;
}

/** One line for `status`: what the server does, and what that means for a second writer. */
export function describeConditions(c: Conditions): string {
  const inm = c.ifNoneMatch ? "If-None-Match honoured" : "If-None-Match ignored";
  const im = { quoted: "If-Match honoured", unquoted: "If-Match honoured with unquoted ETags only", ignored: "If-Match ignored", refused: "If-Match never matches" }[c.ifMatch];
  const meaning = c.ifNoneMatch
    ? c.ifMatch === "quoted" || c.ifMatch === "unquoted"
      ? "lease and fencing enforced by the server"
      : "every object fenced, but the lease is renewed by read-then-write (best effort)"
    : "NOT fenced: the server ignores conditional writes, so one writer at a time is the operator's promise";
  return `${inm}, ${im}: ${meaning}`;
}

/**
 * The lease store for `lease.json`: conditional where the server honours the condition, and
 * otherwise checked by reading first (enough to refuse a second writer that starts while the
 * first runs, not to settle a race between two that start together).
 */
export function conditionalLeaseStore(
  c: Conditions,
  put: ConditionalPut,
  get: () => Promise<{ record: LeaseRecord | null; etag: string } | null>,
  del: () => Promise<void>,
): LeaseStore {
  const rel = "lease.json";
  const body = (record: LeaseRecord) => JSON.stringify(record);
  const ifMatch = c.ifMatch === "quoted" ? quoted : c.ifMatch === "unquoted" ? unquoted : null;
  return {
    get,
    putIfAbsent: async (record) => (c.ifNoneMatch ? put(rel, body(record), { IfNoneMatch: "*" }) : (await get()) ? null : put(rel, body(record), {})),
    putIfMatch: async (record, etag) =>
      ifMatch ? put(rel, body(record), { IfMatch: ifMatch(etag) }) : unquoted((await get())?.etag ?? "") === unquoted(etag) ? put(rel, body(record), {}) : null,
    delete: del,
  };
}
