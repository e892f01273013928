/**
 * The S3 backend: a backup under a key prefix of an S3 bucket, or of any S3-compatible store
 * (MinIO, R2, Ceph RGW, s3rver).
 *
 * URL: `s3://bucket/prefix?region=eu-west-1&endpoint=http://127.0.0.1:9000&forcePathStyle=true`.
 * Credentials come from the AWS SDK's standard provider chain (environment, shared config,
 * instance role), never from the URL.
 *
 * Layout (docs/format.md has the details):
 *   <prefix>/tidemark.json                     identity, written once
 *   <prefix>/lease.json                        the writer's lease (conditional PUTs)
 *   <prefix>/bases/<version>-<seq>.tdmk        bases: change records pointing to snapshots; the newest is live
 *   <prefix>/generations.json                  the older bases (and first changes) that retention keeps
 *   <prefix>/changes/<version>-<seq>.<c|s|r>   one object per change (c), change with snapshot (s) or rewind (r)
 *   <prefix>/snapshots/<version>-<id>.tms      snapshot blobs
 *
 * Keys are zero-padded, so listing order is log order. The bucket is listed once, at open;
 * after that the head is tracked in memory.
 */
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import {
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import type {
  Backend,
  BackendFactory,
  BackendHead,
  BackendOptions,
  BackendStatus,
  ChangeRange,
  ChangeToStore,
  CompactionBase,
} from "../src/backup/backup.js";
import type { StoredChange } from "../src/model/change.js";
import {
  RecordType,
  decodeRecord,
  encodeChangeRecord,
  encodeRewindRecord,
  probeRecord,
  recordSnapshotRef,
  type DecodedRecord,
  type SnapshotRef,
} from "../src/format/record-codec.js";
import { BackendError, CorruptError, TidemarkError, UsageError } from "../src/util/errors.js";
import { LogState, type LogEntry } from "../src/backup/log-state.js";
import { codecFor, initialSettings, retentionFor, shownSettings, updatedSettings, type BackupSettings } from "../src/backup/settings.js";
import { retainedGenerations, type RetentionPolicy } from "../src/model/retention.js";
import { PLAIN, type Codec } from "../src/format/sealing.js";
import { silentLogger, type Logger } from "../src/util/logger.js";
import { Mutex } from "../src/util/mutex.js";
import { ReaderCount } from "../src/backup/reader-count.js";
import { SnapshotEncoder, decodeSnapshot } from "../src/format/snapshot-codec.js";
import { Lease, type LeaseRecord, type LeaseStore } from "./s3-lease.js";

const DRIVER_NAME = "s3";
const IDENTITY = { format: "tidemark-s3", formatVersion: 1 };
const CHANGE_KEY_RE = /^changes\/(\d{20})-(\d{13})\.([csr])$/;
const BASE_KEY_RE = /^bases\/(\d{20})-(\d{13})\.tdmk$/;
const SNAPSHOT_KEY_RE = /^snapshots\/\d{20}-[0-9a-f]{8}\.tms$/;
/** Parts of a snapshot upload, and how many upload at once (memory: PART_SIZE x QUEUE). */
const PART_SIZE = 8 << 20;
const UPLOAD_QUEUE = 2;
/** Change objects fetched ahead while streaming. */
const PREFETCH = 16;
/** DeleteObjects takes at most this many keys. */
const DELETE_BATCH = 1000;
const URL_PARAMS = ["region", "endpoint", "forcePathStyle", "attempts"];

// The SDK warns on every process that Node 20 will not be supported by SDK releases from 2027;
// tidemark pins its SDK version, so the notice is noise on every CLI run.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";

/** Where an S3 backup is. */
export interface S3Location {
  readonly bucket: string;
  /** The key prefix, without leading or trailing slashes ("" for the bucket root). */
  readonly prefix: string;
  readonly region: string;
  readonly endpoint?: string;
  readonly forcePathStyle: boolean;
  /** Attempts per request for transient failures. */
  readonly attempts: number;
}

/** Parses `s3://bucket/prefix?…`; refuses credentials in the URL and unknown parameters. */
export function parseS3Url(url: URL): S3Location {
  const shown = `s3://${url.hostname}${url.pathname}`;
  if (url.username || url.password) {
    throw new UsageError(`credentials do not go in the URL (${shown})`, {
      hint: "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE) or an instance role",
    });
  }
  if (!url.hostname) throw new UsageError(`no bucket in ${url.href}`, { hint: "s3://bucket/prefix?region=…" });
  for (const k of url.searchParams.keys()) {
    if (!URL_PARAMS.includes(k)) throw new UsageError(`unknown parameter "${k}" in ${shown}`, { hint: `known: ${URL_PARAMS.join(", ")}` });
  }
  const endpoint = url.searchParams.get("endpoint") ?? undefined;
  const attempts = Number(url.searchParams.get("attempts") ?? 6);
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 20) throw new UsageError(`attempts must be 1..20 in ${shown}`);
  return {
    bucket: url.hostname,
    prefix: decodeURIComponent(url.pathname).replace(/^\/+|\/+$/g, ""),
    region: url.searchParams.get("region") ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
    ...(endpoint && { endpoint }),
    forcePathStyle: url.searchParams.get("forcePathStyle") === "true" || (endpoint !== undefined && url.searchParams.get("forcePathStyle") !== "false"),
    attempts,
  };
}

/** Opens an S3 backend. */
export const createBackend: BackendFactory = async (url, options) => {
  const backend = new S3Backend(parseS3Url(url), options);
  await backend.open();
  return backend;
};

/** An entry of the in-memory log: a change object, or the base. */
interface S3Entry extends LogEntry {
  /** Object key relative to the prefix. */
  readonly key: string;
  readonly size: number;
}

/** The S3 backend; see the module comment. */
export class S3Backend implements Backend {
  readonly kind = DRIVER_NAME;
  readonly location: string;
  readonly #loc: S3Location;
  readonly #mode: BackendOptions["mode"];
  readonly #log: Logger;
  readonly #onRetry: BackendOptions["onRetry"];
  readonly #mutex = new Mutex();
  #client: S3Client | null = null;
  /** Retained bases, oldest first (keys bases/…). */
  #bases: S3Entry[] = [];
  /** Whether the history from before the oldest base (the first changes) is retained. */
  #initial = true;
  /** Change and rewind objects held, in key order. */
  #changes: S3Entry[] = [];
  /** The live generation: its entries (the newest base, then the changes after it) and state. */
  #entries: S3Entry[] = [];
  #state!: LogState;
  #retention: RetentionPolicy = {};
  #snapshotSizes = new Map<string, number>();
  #seq = 0;
  #lease: Lease | null = null;
  #closed = false;
  #compacting = false;
  readonly #readers = new ReaderCount();
  readonly #options: BackendOptions;
  #codec: Codec = PLAIN;
  /** An identity update to write once the lease is ours (the backup became encrypted). */
  #pendingIdentity: (BackupSettings & object) | null = null;
  #settings: BackendStatus["settings"];
  /** Timestamps read from records, by key. */
  readonly #timestamps = new Map<string, number>();
  /** Keys that are no longer part of the log, waiting to be deleted. */
  #garbage = new Set<string>();

  constructor(loc: S3Location, options: BackendOptions) {
    this.#loc = loc;
    this.#options = options;
    this.location = `s3://${loc.bucket}/${loc.prefix}`;
    this.#mode = options.mode;
    this.#log = (options.log ?? silentLogger).child({ backend: DRIVER_NAME, location: this.location });
    this.#onRetry = options.onRetry;
  }

  // ------------------------------------------------------------ requests

  #s3(): S3Client {
    const loc = this.#loc;
    // Created lazily: read-only commands that fail early never build one.
    this.#client ??= new S3Client({
      region: loc.region,
      ...(loc.endpoint && { endpoint: loc.endpoint }),
      forcePathStyle: loc.forcePathStyle,
      // Retries are ours (below), with backoff, jitter and metrics.
      maxAttempts: 1,
      // Several S3-compatible servers store streamed bodies with aws-chunked framing when the
      // SDK adds its default checksums, i.e. corrupted; checksums are tidemark's own anyway.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    } satisfies S3ClientConfig);
    return this.#client;
  }

  #key(rel: string): string {
    return this.#loc.prefix ? `${this.#loc.prefix}/${rel}` : rel;
  }

  /**
   * Sends a command, retrying 5xx, throttling and network failures with exponential backoff
   * and full jitter. Other failures become a BackendError naming the bucket and key (never the
   * credentials); `notFound` makes a missing key answer undefined instead.
   */
  async #send<T>(op: string, rel: string, command: () => object, notFound = false): Promise<T | undefined> {
    const where = `s3://${this.#loc.bucket}/${this.#key(rel)}`;
    for (let attempt = 1; ; attempt++) {
      try {
        return (await this.#s3().send(command() as never)) as T;
      } catch (err) {
        const e = err as S3Failure;
        if (notFound && (e.name === "NoSuchKey" || e.name === "NotFound" || e.$metadata?.httpStatusCode === 404) && e.name !== "NoSuchBucket") {
          return undefined;
        }
        if (isTransient(e) && attempt < this.#loc.attempts) {
          this.#onRetry?.(op, attempt, e);
          const delay = Math.min(100 * 2 ** (attempt - 1), 5000);
          await new Promise((r) => setTimeout(r, Math.random() * delay));
          continue;
        }
        throw describeFailure(op, where, e, this.#loc, attempt);
      }
    }
  }

  // ------------------------------------------------------------ open

  /** Opens (or creates) the backup: identity, lease, base, and one listing of the changes. */
  async open(): Promise<void> {
    try {
      if (this.#mode === "create") await this.#create();
      await this.#checkIdentity();
      if (this.#mode !== "read") {
        this.#lease = new Lease(await this.#leaseStore(), this.location, this.#log);
        await this.#lease.acquire();
      }
      await this.#load();
      if (this.#mode !== "read") {
        if (this.#pendingIdentity) await this.#putIdentity(this.#pendingIdentity);
        await this.#collectGarbage();
      }
    } catch (err) {
      await this.#lease?.release().catch(() => {});
      this.#client?.destroy();
      throw err;
    }
  }

  async #create(): Promise<void> {
    if ((await this.#getText("tidemark.json")) !== undefined) {
      throw new TidemarkError("E_EXISTS", `a backup already exists at ${this.location}`, { hint: `inspect it with: tidemark status ${this.location}` });
    }
    if ((await this.#list("", 1)).length > 0) {
      throw new TidemarkError("E_EXISTS", `${this.location} is not empty and holds no backup`, { hint: "give init a new prefix" });
    }
    await this.#putIdentity({ ...IDENTITY, created: new Date().toISOString(), ...initialSettings(this.#options) });
  }

  async #putIdentity(identity: object): Promise<void> {
    const body = JSON.stringify(identity, null, 2);
    await this.#send("put", "tidemark.json", () => new PutObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key("tidemark.json"), Body: body, ContentType: "application/json" }));
  }

  async #checkIdentity(): Promise<void> {
    const text = await this.#getText("tidemark.json");
    if (text === undefined) {
      throw new TidemarkError("E_NO_BACKUP", `no backup at ${this.location} (tidemark.json not found)`, {
        hint: `create one with: tidemark init ${this.location}`,
      });
    }
    let id: { format?: unknown; formatVersion?: unknown } & BackupSettings;
    try {
      id = JSON.parse(text);
    } catch {
      throw new CorruptError(`${this.location}/tidemark.json`, "identity object is not valid JSON");
    }
    if (id.format !== IDENTITY.format) throw new CorruptError(`${this.location}/tidemark.json`, `not a tidemark S3 backup (format ${JSON.stringify(id.format)})`);
    if (id.formatVersion !== IDENTITY.formatVersion) {
      throw new CorruptError(`${this.location}/tidemark.json`, `backup format version ${String(id.formatVersion)} is not supported`, {}, { hint: "upgrade tidemark" });
    }
    this.#codec = codecFor(id, this.#options, this.location);
    this.#retention = retentionFor(id, this.#options);
    this.#pendingIdentity = updatedSettings(id, this.#codec, this.#options);
    this.#settings = shownSettings(this.#pendingIdentity ?? id);
  }

  /**
   * Lists the bucket once and rebuilds the log: the retained bases (generations.json names the
   * older ones; the newest base is always live), the change objects, and the live state. What
   * no retained generation needs is garbage, left by a cleanup that was cut short.
   */
  async #load(): Promise<void> {
    this.#snapshotSizes.clear();
    const objects = await this.#list("", Infinity);
    const manifest = await this.#readManifest();
    const bases: S3Entry[] = [];
    const changes: S3Entry[] = [];
    let maxSeq = 0;
    for (const o of objects) {
      if (SNAPSHOT_KEY_RE.test(o.key)) this.#snapshotSizes.set(o.key.slice("snapshots/".length), o.size);
      const base = BASE_KEY_RE.exec(o.key);
      if (base) {
        maxSeq = Math.max(maxSeq, Number(base[2]));
        const snapshot = await this.#fetchSnapshotRef(o.key, Number(base[1]));
        if (!snapshot) throw new CorruptError(`${this.location}/${o.key}`, "a base record without a snapshot", { version: Number(base[1]) });
        bases.push({ type: RecordType.Change, version: Number(base[1]), snapshot, position: 0, length: o.size, key: o.key, size: o.size });
        continue;
      }
      const m = CHANGE_KEY_RE.exec(o.key);
      if (!m) continue;
      const version = Number(m[1]);
      maxSeq = Math.max(maxSeq, Number(m[2]));
      const kind = m[3];
      const snapshot = kind === "s" ? await this.#fetchSnapshotRef(o.key, version) : undefined;
      changes.push({ type: kind === "r" ? RecordType.Rewind : RecordType.Change, version, ...(snapshot && { snapshot }), position: 0, length: o.size, key: o.key, size: o.size });
    }
    // A plain counter, not a clock: keys must not tell when changes were made.
    this.#seq = maxSeq + 1;
    const newest = bases.at(-1);
    this.#bases = bases.filter((b) => b === newest || manifest.retained.has(b.key));
    this.#initial = bases.length === 0 || manifest.initial;
    const oldest = this.#initial ? 0 : this.#bases[0]!.version;
    this.#changes = changes.filter((c) => c.version > oldest);
    for (const b of bases) if (!this.#bases.includes(b)) this.#garbage.add(b.key);
    for (const c of changes) if (c.version <= oldest) this.#garbage.add(c.key);
    this.#setLive();
    const live = this.#liveSnapshots();
    for (const name of this.#snapshotSizes.keys()) if (!live.has(name)) this.#garbage.add(`snapshots/${name}`);
  }

  /** Rebuilds the live generation from the newest base and the changes after it. */
  #setLive(): void {
    const g = this.#generation(this.#bases.at(-1) ?? null);
    this.#entries = g.entries;
    this.#state = g.state;
  }

  /** The entries and state of the generation that starts at `base` (null: the first changes). */
  #generation(base: S3Entry | null): { entries: S3Entry[]; state: LogState } {
    const state = new LogState(this.location);
    const entries: S3Entry[] = [];
    const add = (e: S3Entry) => {
      const moved = { ...e, position: entries.length };
      const prev = entries.at(-1);
      // A rewind marker whose change object is already deleted marks the head as rewound once.
      if (moved.type === RecordType.Rewind && !(prev && prev.type === RecordType.Change && prev.version === moved.version)) state.markRewound(moved);
      else state.apply(moved);
      entries.push(moved);
    };
    if (base) add(base);
    for (const c of this.#changes) if (!base || c.version > base.version) add(c);
    return { entries, state };
  }

  /** Every retained generation, oldest first: its base (null for the first changes), entries and state. */
  #generations(): { base: S3Entry | null; entries: S3Entry[]; state: LogState }[] {
    const newest = this.#bases.at(-1) ?? null;
    const starts: (S3Entry | null)[] = [...this.#bases];
    if (this.#initial && newest !== null && this.#changes.length > 0 && this.#changes[0]!.version <= this.#bases[0]!.version) starts.unshift(null);
    if (newest === null) starts.push(null);
    return starts.map((base) => (base === newest ? { base, entries: this.#entries, state: this.#state } : { base, ...this.#generation(base) }));
  }

  /** Blob names that any retained generation points to. */
  #liveSnapshots(): Set<string> {
    return new Set(this.#generations().flatMap((g) => g.state.snapshots.map((x) => x.ref)));
  }

  /** generations.json: the older bases that retention keeps, and whether the first changes are kept. */
  async #readManifest(): Promise<{ retained: Set<string>; initial: boolean }> {
    const text = await this.#getText("generations.json");
    if (text === undefined) return { retained: new Set(), initial: false };
    try {
      const m = JSON.parse(text) as { retained?: unknown; initial?: unknown };
      if (Array.isArray(m.retained) && m.retained.every((k) => typeof k === "string") && typeof m.initial === "boolean") {
        return { retained: new Set(m.retained as string[]), initial: m.initial };
      }
    } catch {
      // reported below
    }
    throw new CorruptError(`${this.location}/generations.json`, "the list of retained generations does not parse", {}, {
      hint: "restore it from a copy, or delete it to keep only the newest base",
    });
  }

  async #writeManifest(retained: readonly string[], initial: boolean): Promise<void> {
    const body = JSON.stringify({ retained, initial });
    await this.#send("put", "generations.json", () => new PutObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key("generations.json"), Body: body }));
  }

  /** Lists keys that start with `under` (relative to the prefix), sorted, up to `max`. */
  async #list(under: string, max: number): Promise<{ key: string; size: number }[]> {
    const out: { key: string; size: number }[] = [];
    const prefix = this.#key(under);
    const strip = this.#loc.prefix ? this.#loc.prefix.length + 1 : 0;
    const seen = new Set<string>();
    let token: string | undefined;
    do {
      // https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html
      const page = await this.#send<{ Contents?: { Key?: string; Size?: number }[]; NextContinuationToken?: string; IsTruncated?: boolean }>(
        "list",
        under || "/",
        () =>
          new ListObjectsV2Command({
            Bucket: this.#loc.bucket,
            ...(prefix && { Prefix: prefix }),
            ...(token && { ContinuationToken: token }),
            ...(Number.isFinite(max) && { MaxKeys: max }),
          }),
      );
      for (const c of page?.Contents ?? []) {
        if (c.Key) out.push({ key: c.Key.slice(strip), size: c.Size ?? 0 });
      }
      token = page?.IsTruncated ? page.NextContinuationToken : undefined;
      if (token !== undefined) {
        if (seen.has(token)) throw new BackendError(DRIVER_NAME, "list", this.location, "the server repeated a continuation token; refusing to loop");
        seen.add(token);
      }
    } while (token !== undefined && out.length < max);
    for (let i = 1; i < out.length; i++) {
      if (out[i - 1]!.key >= out[i]!.key) throw new BackendError(DRIVER_NAME, "list", this.location, "the listing is not sorted by key");
    }
    return out;
  }

  async #getBytes(rel: string): Promise<Buffer | undefined> {
    // https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html
    const res = await this.#send<{ Body?: { transformToByteArray(): Promise<Uint8Array> } }>(
      "get",
      rel,
      () => new GetObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel) }),
      true,
    );
    if (!res?.Body) return undefined;
    const bytes = await res.Body.transformToByteArray();
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  async #getText(rel: string): Promise<string | undefined> {
    return (await this.#getBytes(rel))?.toString("utf8");
  }

  #decode(buf: Buffer, rel: string): DecodedRecord {
    const where = `${this.location}/${rel}`;
    const probe = probeRecord(buf, 0);
    if (probe.kind !== "ok") {
      throw new CorruptError(where, probe.kind === "short" ? "object is truncated" : probe.what, { offset: 0, ...(probe.kind === "bad" && probe.version !== undefined && { version: probe.version }) });
    }
    if (probe.length !== buf.length) throw new CorruptError(where, `object has ${buf.length - probe.length} bytes after its record`, { version: probe.version });
    return decodeRecord(buf, 0, probe, where, this.#codec.keyring);
  }

  /** The snapshot reference of a change object; readable without a key. */
  async #fetchSnapshotRef(rel: string, version: number): Promise<string | undefined> {
    const buf = await this.#getBytes(rel);
    if (!buf) throw new BackendError(DRIVER_NAME, "get", `${this.location}/${rel}`, "object disappeared while listing", { hint: "run the command again" });
    const probe = probeRecord(buf, 0);
    if (probe.kind !== "ok" || probe.version !== version) throw new CorruptError(`${this.location}/${rel}`, "object is not an intact record of its version", { version });
    return recordSnapshotRef(buf, 0, probe, `${this.location}/${rel}`);
  }

  async #fetchRecord(rel: string, version: number): Promise<DecodedRecord> {
    const buf = await this.#getBytes(rel);
    if (!buf) {
      throw new BackendError(DRIVER_NAME, "get", `${this.location}/${rel}`, "object disappeared while reading (a compaction ran meanwhile)", {
        hint: "run the command again",
      });
    }
    const rec = this.#decode(buf, rel);
    if (rec.version !== version) throw new CorruptError(`${this.location}/${rel}`, `object holds version ${rec.version}, its key says ${version}`);
    return rec;
  }

  // ------------------------------------------------------------ reads

  head(): BackendHead {
    return { version: this.#state.head, prevVersion: this.#state.prevVersion };
  }

  async status(): Promise<BackendStatus> {
    const s = this.#state;
    let snapshotBytes = 0;
    for (const ref of this.#liveSnapshots()) snapshotBytes += this.#snapshotSizes.get(ref) ?? 0;
    const logBytes = [...this.#bases, ...this.#changes].reduce((n, e) => n + e.size, 0);
    const headTimestamp = s.head === 0 ? undefined : (s.headTimestamp ?? (await this.#headTimestamp()));
    const generations = [];
    for (const g of this.#generations()) {
      if (g.state.records === 0) continue;
      const first = (g.base ?? g.state.firstEntry) as S3Entry | null;
      const firstTimestamp = first ? await this.#timestampOf(first) : undefined;
      generations.push({
        baseVersion: g.base?.version ?? (g.state.firstEntry?.snapshot ? g.state.firstVersion : 0),
        firstVersion: g.state.firstVersion,
        lastVersion: g.state.head,
        ...(firstTimestamp !== undefined && { firstTimestamp }),
      });
    }
    return {
      version: s.head,
      prevVersion: s.prevVersion,
      baseVersion: s.baseVersion,
      firstVersion: generations[0]?.firstVersion ?? 0,
      records: s.records,
      bytes: logBytes + snapshotBytes,
      snapshotBytes,
      generations,
      ...(headTimestamp !== undefined && { headTimestamp }),
      ...(this.#settings && { settings: this.#settings }),
    };
  }

  /** The timestamp of one entry's record, remembered; undefined when it is sealed and the key is missing. */
  async #timestampOf(e: S3Entry): Promise<number | undefined> {
    const cached = this.#timestamps.get(e.key) ?? e.timestamp;
    if (cached !== undefined) return cached;
    try {
      const ts = (await this.#fetchRecord(e.key, e.version)).timestamp;
      this.#timestamps.set(e.key, ts);
      return ts;
    } catch (err) {
      if (err instanceof TidemarkError && err.code === "E_KEY") return undefined;
      throw err;
    }
  }

  /** The head change's timestamp, read from its object (the listing does not carry it). */
  async #headTimestamp(): Promise<number | undefined> {
    const head = this.#state.headEntry as S3Entry | null;
    if (!head) return undefined;
    const ts = await this.#timestampOf(head);
    if (ts !== undefined) this.#state.headTimestamp = ts;
    return ts;
  }

  streamChanges(range: ChangeRange = {}): AsyncIterable<StoredChange> {
    this.#checkOpen();
    if (this.#state.head === 0) return { [Symbol.asyncIterator]: async function* () {} };
    // The newest generation whose versions start at or before the range: on S3 every retained
    // generation runs up to the head, because the change objects after a base are shared.
    const to = range.to ?? this.#state.head;
    const lo = Math.min(range.from ?? to, to);
    const gens = this.#generations().filter((x) => x.state.records > 0);
    const g = gens.findLast((x) => x.state.firstVersion <= lo) ?? gens[0]!;
    const { start } = g.state.plan(range);
    // The live entries to read, from the plan's start: rewound changes and markers are skipped
    // here, from the listing alone, so they are never even fetched.
    const wanted: S3Entry[] = [];
    for (let i = start; i < g.entries.length; i++) {
      if (!isLive(g.entries, i)) continue;
      wanted.push(g.entries[i]!);
      if (g.entries[i]!.version === to) break;
    }
    return { [Symbol.asyncIterator]: () => this.#stream(wanted) };
  }

  /** Fetches `wanted` in order, keeping PREFETCH requests ahead. */
  async *#stream(wanted: S3Entry[]): AsyncGenerator<StoredChange> {
    const release = this.#readers.enter();
    const inFlight: Promise<DecodedRecord>[] = [];
    let next = 0;
    const fill = () => {
      while (inFlight.length < PREFETCH && next < wanted.length) {
        const e = wanted[next++]!;
        const p = this.#fetchRecord(e.key, e.version);
        p.catch(() => {}); // awaited in order below
        inFlight.push(p);
      }
    };
    try {
      fill();
      while (inFlight.length > 0) {
        const rec = await inFlight.shift()!;
        fill();
        const change: { -readonly [K in keyof StoredChange]: StoredChange[K] } = { version: rec.version, timestamp: rec.timestamp };
        if (rec.snapshot) change.snapshot = this.#storedSnapshot(rec.snapshot, rec.version);
        if (rec.transaction) change.transaction = rec.transaction;
        yield change;
      }
    } finally {
      release();
    }
  }

  #storedSnapshot(ref: SnapshotRef, version: number) {
    const rel = `snapshots/${ref.ref}`;
    const where = `${this.location}/${rel}`;
    const open = async function* (this: S3Backend): AsyncGenerator<Buffer> {
      const release = this.#readers.enter();
      try {
        const res = await this.#send<{ Body?: Readable }>("get", rel, () => new GetObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel) }), true);
        if (!res?.Body) {
          throw new BackendError(DRIVER_NAME, "get", where, "snapshot disappeared while reading (a compaction ran meanwhile)", { hint: "run the command again" });
        }
        yield* decodeSnapshot(res.Body as AsyncIterable<Uint8Array>, ref, where, version, this.#codec.keyring);
      } finally {
        release();
      }
    };
    return { size: ref.size, open: () => open.call(this) };
  }

  // ------------------------------------------------------------ writes

  addChange(change: ChangeToStore): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const head = this.#state.head;
      const ok = change.snapshot ? change.version > head : change.version === head + 1;
      if (!ok) throw new Error(`s3 backend: change ${change.version} cannot follow head ${head}; the version rules should have refused it`);
      const ref = change.snapshot ? await this.#uploadSnapshot(change.version, change.snapshot) : undefined;
      try {
        const rec = encodeChangeRecord(
          {
            version: change.version,
            timestamp: change.timestamp,
            ...(ref && { snapshot: ref }),
            ...(change.transaction && { transaction: change.transaction }),
          },
          this.#codec,
        );
        await this.#putRecord(change.version, ref ? "s" : "c", rec, ref, change.timestamp);
      } catch (err) {
        if (ref) await this.#deleteKeys([`snapshots/${ref.ref}`]).catch(() => {});
        throw err;
      }
    });
  }

  rewind(): Promise<void> {
    return this.#mutex.run(async () => {
      this.#checkWritable();
      const s = this.#state;
      const last = s.last as S3Entry | null;
      if (s.prevVersion === null || !last) {
        throw new TidemarkError(
          "E_REWIND",
          s.head === 0 ? `nothing to rewind: ${this.location} is empty` : `change ${s.head} cannot be rewound: only the last change can be, and only once`,
          { hint: "tidemark status shows the head; a host that is behind the backup must be restored" },
        );
      }
      // The marker first: once it is stored, the change is rewound, whatever happens next.
      await this.#putRecord(last.version, "r", encodeRewindRecord(last.version, Date.now(), this.#codec));
      // Then the rewound change's object goes, with its snapshot; a crash before this leaves
      // both objects, which read the same.
      const gone = [last.key, ...(last.snapshot ? [`snapshots/${last.snapshot}`] : [])];
      await this.#deleteKeys(gone).catch((err: unknown) => this.#log.warn({ err }, "could not delete a rewound change; it stays harmless"));
    });
  }

  /** PUTs one record under the next key and applies it to the state. */
  async #putRecord(version: number, kind: "c" | "s" | "r", rec: Buffer, snapshot?: SnapshotRef, timestamp?: number): Promise<void> {
    const seq = this.#seq++;
    const rel = `changes/${String(version).padStart(20, "0")}-${String(seq).padStart(13, "0")}.${kind}`;
    // https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html
    await this.#send("put", rel, () => new PutObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel), Body: rec, ContentType: "application/octet-stream" }));
    const entry: S3Entry = {
      type: kind === "r" ? RecordType.Rewind : RecordType.Change,
      version,
      ...(snapshot && { snapshot: snapshot.ref }),
      ...(timestamp !== undefined && { timestamp }),
      position: this.#entries.length,
      length: rec.length,
      key: rel,
      size: rec.length,
    };
    this.#state.apply(entry);
    this.#entries.push(entry);
    this.#changes.push(entry);
  }

  /** Streams a snapshot up as a multipart upload; returns its reference. */
  async #uploadSnapshot(version: number, source: AsyncIterable<Uint8Array>): Promise<SnapshotRef> {
    const name = `${String(version).padStart(20, "0")}-${randomBytes(4).toString("hex")}.tms`;
    const rel = `snapshots/${name}`;
    const encoder = new SnapshotEncoder(this.#codec);
    let size = 0;
    const counted = async function* () {
      for await (const frame of encoder.frames(source)) {
        size += frame.length;
        yield frame;
      }
    };
    try {
      // https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html (via lib-storage)
      const upload = new Upload({
        client: this.#s3(),
        params: { Bucket: this.#loc.bucket, Key: this.#key(rel), Body: Readable.from(counted()), ContentType: "application/octet-stream" },
        partSize: PART_SIZE,
        queueSize: UPLOAD_QUEUE,
        leavePartsOnError: false,
      });
      await upload.done();
    } catch (err) {
      // The source is consumed as it goes up, so a snapshot upload is not retried here; the
      // caller (a host, the daemon's replica feeder) sends it again.
      if (err instanceof TidemarkError) throw err;
      throw describeFailure("upload snapshot", `s3://${this.#loc.bucket}/${this.#key(rel)}`, err as S3Failure, this.#loc, 1);
    }
    this.#snapshotSizes.set(name, size);
    return { ...encoder.digest, ref: name };
  }

  async compact(base: CompactionBase): Promise<void> {
    this.#checkWritable();
    if (this.#compacting) throw new TidemarkError("E_BACKEND", `[s3] compact ${this.location}: a compaction is already running`);
    this.#compacting = true;
    let ref: SnapshotRef | undefined;
    try {
      const s = this.#state;
      if (base.version > s.head || (base.version === s.head && s.prevVersion !== null) || base.version < s.firstVersion) {
        throw new Error(`s3 backend: compaction base ${base.version} is not a settled version of ${s.firstVersion}..${s.head}`);
      }
      ref = await this.#uploadSnapshot(base.version, base.snapshot);
      const baseRef = ref;
      await this.#mutex.run(async () => {
        this.#checkWritable();
        const rec = encodeChangeRecord({ version: base.version, timestamp: base.timestamp, snapshot: baseRef }, this.#codec);
        const rel = `bases/${String(base.version).padStart(20, "0")}-${String(this.#seq++).padStart(13, "0")}.tdmk`;
        // The generation being superseded is listed as retained before the switch, so that a
        // crash right after it keeps it; pruning by the retention policy comes after.
        await this.#writeManifest(this.#bases.map((b) => b.key), this.#initial);
        // The switch: one PUT adds the newest base. Before it, the old base and its changes
        // stand; after it, readers start from the new base.
        // https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html
        await this.#send("put", rel, () => new PutObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel), Body: rec }));
        this.#timestamps.set(rel, base.timestamp);
        this.#bases.push({ type: RecordType.Change, version: base.version, snapshot: baseRef.ref, position: 0, length: rec.length, key: rel, size: rec.length });
        this.#setLive();
        await this.#prune();
      });
      await this.#collectGarbage();
    } catch (err) {
      if (ref && !this.#liveSnapshots().has(ref.ref)) await this.#deleteKeys([`snapshots/${ref.ref}`]).catch(() => {});
      throw err instanceof TidemarkError ? err : new BackendError(DRIVER_NAME, "compact", this.location, (err as Error).message, { cause: err });
    } finally {
      this.#compacting = false;
    }
  }

  /** Drops the generations the retention policy no longer asks for, and marks their objects garbage. */
  async #prune(): Promise<void> {
    const gens = this.#generations();
    const infos = [];
    for (const g of gens) {
      const first = (g.base ?? g.state.firstEntry) as S3Entry | null;
      infos.push({ id: g.base?.key ?? "initial", baseTimestamp: first ? await this.#timestampOf(first) : undefined });
    }
    const keep = retainedGenerations(infos, this.#retention, Date.now());
    const before = this.#liveSnapshots();
    const initial = this.#initial && keep.has("initial");
    const bases = this.#bases.filter((b) => keep.has(b.key));
    await this.#writeManifest(bases.slice(0, -1).map((b) => b.key), initial);
    for (const b of this.#bases) if (!keep.has(b.key)) this.#garbage.add(b.key);
    this.#bases = bases;
    this.#initial = initial;
    const oldest = initial ? 0 : bases[0]!.version;
    for (const c of this.#changes) if (c.version <= oldest) this.#garbage.add(c.key);
    this.#changes = this.#changes.filter((c) => c.version > oldest);
    const after = this.#liveSnapshots();
    for (const ref of before) if (!after.has(ref)) this.#garbage.add(`snapshots/${ref}`);
  }

  /** Deletes superseded objects, unless an in-process reader may still need them. */
  async #collectGarbage(): Promise<void> {
    const later = () => {
      if (this.#closed || this.#mode === "read") return;
      void this.#collectGarbage().catch((err: unknown) => this.#log.warn({ err }, "could not delete superseded objects; will retry"));
    };
    if (this.#readers.deferring(later)) return;
    const keys = [...this.#garbage];
    await this.#deleteKeys(keys);
    for (const k of keys) {
      this.#garbage.delete(k);
      if (k.startsWith("snapshots/")) this.#snapshotSizes.delete(k.slice("snapshots/".length));
    }
  }

  async #deleteKeys(rels: string[]): Promise<void> {
    for (let i = 0; i < rels.length; i += DELETE_BATCH) {
      const batch = rels.slice(i, i + DELETE_BATCH);
      // https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html
      const res = await this.#send<{ Errors?: { Key?: string; Code?: string; Message?: string }[] }>(
        "delete",
        batch[0]!,
        () => new DeleteObjectsCommand({ Bucket: this.#loc.bucket, Delete: { Objects: batch.map((k) => ({ Key: this.#key(k) })), Quiet: true } }),
      );
      const failed = res?.Errors?.filter((e) => e.Code !== "NoSuchKey") ?? [];
      if (failed.length > 0) {
        throw new BackendError(DRIVER_NAME, "delete", `s3://${this.#loc.bucket}/${failed[0]!.Key}`, `${failed[0]!.Code}: ${failed[0]!.Message}`);
      }
    }
  }

  async reset(): Promise<void> {
    await this.#mutex.run(async () => {
      this.#checkWritable();
      const all = await this.#list("", Infinity);
      await this.#deleteKeys(all.map((o) => o.key).filter((k) => k !== "tidemark.json" && k !== "lease.json"));
      this.#garbage.clear();
      this.#bases = [];
      this.#changes = [];
      this.#initial = true;
      this.#setLive();
      this.#snapshotSizes.clear();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#mutex.run(async () => {
      this.#closed = true;
      await this.#lease?.release().catch((err: unknown) => this.#log.warn({ err }, "could not release the writer lease; it expires by itself"));
      this.#client?.destroy();
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new TidemarkError("E_CLOSED", `[s3] ${this.location}: backend is closed`);
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (this.#mode === "read") throw new TidemarkError("E_CLOSED", `[s3] ${this.location}: opened read-only`);
    if (this.#lease?.lost) throw this.#lease.lost;
  }

  // ------------------------------------------------------------ lease

  /** The lease's store, after finding out whether this server honours conditional writes. */
  async #leaseStore(): Promise<LeaseStore> {
    const conditional = await this.#probeConditionalWrites();
    if (!conditional) {
      this.#log.info({}, "this S3-compatible server ignores conditional writes; the single-writer lease is best effort (see docs/format.md)");
    }
    const key = this.#key("lease.json");
    const bucket = this.#loc.bucket;
    const put = async (record: LeaseRecord, condition: { IfNoneMatch?: string; IfMatch?: string }) => {
      try {
        const res = await this.#send<{ ETag?: string }>("put", "lease.json", () => new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(record), ...condition }));
        return res?.ETag ?? "";
      } catch (err) {
        if ((err as TidemarkError).cause && isPreconditionFailed((err as TidemarkError).cause as S3Failure)) return null;
        throw err;
      }
    };
    const get = async () => {
      const res = await this.#send<{ Body?: { transformToString(): Promise<string> }; ETag?: string }>(
        "get",
        "lease.json",
        () => new GetObjectCommand({ Bucket: bucket, Key: key }),
        true,
      );
      if (!res?.Body) return null;
      let record: LeaseRecord | null = null;
      try {
        record = JSON.parse(await res.Body.transformToString()) as LeaseRecord;
      } catch {
        record = null;
      }
      return { record, etag: res.ETag ?? "" };
    };
    return {
      get,
      // Where the server ignores the conditions, they are checked by reading first: enough to
      // refuse a second writer, not enough to settle a race between two that start together.
      putIfAbsent: async (record) => (conditional ? put(record, { IfNoneMatch: "*" }) : (await get()) ? null : put(record, {})),
      putIfMatch: async (record, etag) => (conditional ? put(record, { IfMatch: etag }) : (await get())?.etag === etag ? put(record, {}) : null),
      delete: async () => {
        await this.#send("delete", "lease.json", () => new DeleteObjectCommand({ Bucket: bucket, Key: key }));
      },
    };
  }

  /** PUTs a probe object twice with If-None-Match: *; a server that honours it refuses the second. */
  async #probeConditionalWrites(): Promise<boolean> {
    const rel = `.probe-${randomBytes(6).toString("hex")}`;
    const put = () => new PutObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel), Body: "probe", IfNoneMatch: "*" });
    try {
      await this.#send("put", rel, put);
      try {
        await this.#send("put", rel, put);
        return false;
      } catch (err) {
        if ((err as TidemarkError).cause && isPreconditionFailed((err as TidemarkError).cause as S3Failure)) return true;
        throw err;
      }
    } finally {
      await this.#send("delete", rel, () => new DeleteObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel) })).catch(() => {});
    }
  }
}

// ------------------------------------------------------------ failures

/** The parts of an SDK or network error that decide what to do. */
interface S3Failure extends Error {
  code?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
  $response?: { headers?: Record<string, string> };
}

const TRANSIENT_NAMES = new Set(["SlowDown", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "TimeoutError"]);
const TRANSIENT_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EAI_AGAIN", "ENOTFOUND", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH"]);

function isTransient(e: S3Failure): boolean {
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  return TRANSIENT_NAMES.has(e.name) || TRANSIENT_CODES.has(e.code ?? "") || (status === undefined && /socket hang up|ECONNRE|EPIPE/.test(e.message));
}

function isPreconditionFailed(e: S3Failure): boolean {
  return e?.name === "PreconditionFailed" || e?.$metadata?.httpStatusCode === 412 || e?.name === "ConditionalRequestConflict";
}

/** A BackendError naming the operation, bucket and key, with a hint; never the credentials. */
function describeFailure(op: string, where: string, e: S3Failure, loc: S3Location, attempts: number): TidemarkError {
  const status = e.$metadata?.httpStatusCode;
  const what = `${status ? `${status} ` : ""}${e.name && e.name !== "Error" ? e.name : (e.code ?? "error")}`;
  let hint: string | undefined;
  if (e.name === "NoSuchBucket") hint = `create the bucket ${loc.bucket}, or fix the URL`;
  else if (status === 403 || e.name === "AccessDenied" || e.name === "InvalidAccessKeyId" || e.name === "SignatureDoesNotMatch") {
    hint = "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE or the instance role) and the bucket policy";
  } else if (status === 301 || e.name === "PermanentRedirect" || e.name === "AuthorizationHeaderMalformed" || /region/i.test(e.message)) {
    const right = e.$response?.headers?.["x-amz-bucket-region"];
    hint = right ? `the bucket is in ${right}: add ?region=${right} to the URL` : "set ?region= to the bucket's region";
  } else if (isTransient(e)) {
    hint = `the store did not answer after ${attempts} attempts; nothing acknowledged was lost: retry once it is reachable`;
  }
  // The SDK's messages carry no secrets, but may carry request ids; keep them short.
  const detail = `${what}${e.message && e.message !== e.name ? `: ${e.message.split("\n")[0]!.slice(0, 200)}` : ""}`;
  return new BackendError(DRIVER_NAME, op, where, detail, { cause: e, ...(hint && { hint }) });
}

/** Whether entry `i` is a change that no rewind marker cancels. */
function isLive(entries: readonly S3Entry[], i: number): boolean {
  const e = entries[i]!;
  const next = entries[i + 1];
  return e.type === RecordType.Change && !(next?.type === RecordType.Rewind && next.version === e.version);
}
