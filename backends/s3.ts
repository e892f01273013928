/**
 * The S3 backend: a backup under a key prefix of an S3 bucket, or of any S3-compatible store
 * (MinIO, R2, Ceph RGW, s3rver).
 *
 * URL: `s3://bucket/prefix?region=eu-west-1&endpoint=http://127.0.0.1:9000&forcePathStyle=true`.
 * Credentials come from the AWS SDK's standard provider chain (environment, shared config,
 * instance role), never from the URL.
 *
 * Layout (docs/format.md has the details):
 *   <prefix>/tidemark.json, generations.json   the core's documents
 *   <prefix>/lease.json                        the writer's lease (conditional PUTs)
 *   <prefix>/log/<generation>/<seq>.tml        a generation's log: one object per append, the
 *                                              first (seq 0) written whole by compaction
 *   <prefix>/snapshots/<name>                  snapshot blobs
 *
 * Keys are zero-padded, so listing order is log order. The bucket is listed once, at open;
 * after that the logs are tracked in memory.
 *
 * Fencing: a writer probes at open what the server does with conditional PUTs
 * (`s3-conditions.ts`). Where `If-None-Match: *` is honoured, every log object is written with
 * it, so a writer that lost its lease can never overwrite another's acknowledged change, and
 * the documents are written with `If-Match` on the ETag this writer last saw. Before each
 * write and before each ack the lease must still be valid (`s3-lease.ts`).
 */
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
import {
  BackendError,
  TidemarkError,
  backoffDelay,
  vanished,
  type BlobListing,
  type DocumentName,
  type GenerationListing,
  type LogChunk,
  type Logger,
  type Storage,
  type StorageFactory,
  type StorageOptions,
  type WriterLock,
} from "../src/backend-kit.js";
import { conditionalLeaseStore, describeConditions, fences, probeConditions, type Conditions, type PutCondition } from "./s3-conditions.js";
import { Lease, describe, parseLeaseRecord, type LeaseRecord } from "./s3-lease.js";
import { credentialProvider, describeFailure, isNotFound, isPreconditionFailed, isTransient, parseS3Url, type S3Failure, type S3Location } from "./s3-requests.js";

export { parseS3Url } from "./s3-requests.js";

const DRIVER_NAME = "s3";
const LOG_KEY_RE = /^log\/(\d{10})\/(\d{10})\.tml$/;
const SNAPSHOT_PREFIX = "snapshots/";
const LEASE = "lease.json";
/** Parts of a snapshot upload, and how many upload at once (memory: PART_SIZE x QUEUE). */
const PART_SIZE = 8 << 20;
const UPLOAD_QUEUE = 2;
/** Log objects fetched ahead while reading, and the most bytes they may hold (memory). */
const PREFETCH = 16;
const PREFETCH_BYTES = 32 << 20;
/** The most bytes of log objects a reader keeps from its open for the stream after it. */
const LOG_CACHE_BYTES = 32 << 20;
/** DeleteObjects takes at most this many keys. */
const DELETE_BATCH = 1000;
/** Request retries: from 100 ms, doubling to 5 s, full jitter. */
const RETRY = { baseMs: 100, maxMs: 5000, jitter: 1 } as const;
/** Opens the S3 backend. */
export const createStorage: StorageFactory = async (url, options) => new S3Storage(parseS3Url(url), options);

function padded(n: number): string {
  return String(n).padStart(10, "0");
}

/** One object of a generation's log. */
interface Segment {
  readonly key: string;
  readonly seq: number;
  /** Offset of its first byte in the generation's log. */
  readonly start: number;
  readonly size: number;
}

/** The S3 backend; see the module comment. */
export class S3Storage implements Storage {
  readonly kind = DRIVER_NAME;
  readonly location: string;
  readonly atomicAppends = true;
  readonly #loc: S3Location;
  readonly #log: Logger;
  readonly #onRetry: StorageOptions["onRetry"];
  readonly #writable: boolean;
  #client: S3Client | null = null;
  /** Each generation's log objects, from the listing at open and the writes since. */
  readonly #logs = new Map<number, Segment[]>();
  /** Blobs from the listing at open, until listBlobs takes them. */
  #blobs: BlobListing[] | null = null;
  /** The writer's lease and what the server does with conditions, once `lock` took it. */
  #lease: Lease | null = null;
  #conditions: Conditions | null = null;
  /** The documents' ETags as last read or written (null: absent), for conditional replaces. */
  readonly #docEtags = new Map<DocumentName, string | null>();
  /**
   * A reader's log objects, kept from the open's scan for the reads that follow (the status's
   * first and last records, the stream), so that a restore GETs each object once; up to
   * LOG_CACHE_BYTES in all, until the storage closes. A log object never changes once written;
   * a writer keeps none (a failed compaction's keys are written again by the next one).
   */
  readonly #logCache = new Map<string, Buffer>();
  #logCacheBytes = 0;

  constructor(loc: S3Location, options: StorageOptions) {
    this.#loc = loc;
    this.location = `s3://${loc.bucket}/${loc.prefix}`;
    this.#log = options.log;
    this.#onRetry = options.onRetry;
    this.#writable = options.writable;
  }

  // ------------------------------------------------------------ requests

  #s3(): S3Client {
    const loc = this.#loc;
    // Created lazily: read-only commands that fail early never build one.
    this.#client ??= new S3Client({
      region: loc.region,
      ...(loc.endpoint && { endpoint: loc.endpoint }),
      forcePathStyle: loc.forcePathStyle,
      credentials: credentialProvider(),
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
        if (notFound && isNotFound(e)) return undefined;
        if (isTransient(e) && attempt < this.#loc.attempts) {
          this.#onRetry?.(op, attempt, e);
          await new Promise((r) => setTimeout(r, backoffDelay(attempt, RETRY)));
          continue;
        }
        throw describeFailure(op, where, e, this.#loc, attempt, this.#writable);
      }
    }
  }

  #put(rel: string, body: Buffer | string, extra: object = {}): Promise<unknown> {
    // https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html
    return this.#send("put", rel, () => new PutObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel), Body: body, ContentType: "application/octet-stream", ...extra }));
  }

  async #get(rel: string, notFound: boolean): Promise<Buffer | undefined> {
    return (await this.#getTagged(rel, notFound))?.bytes;
  }

  async #getTagged(rel: string, notFound: boolean): Promise<{ bytes: Buffer; etag: string } | undefined> {
    // https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html
    const res = await this.#send<{ Body?: { transformToByteArray(): Promise<Uint8Array> }; ETag?: string }>(
      "get",
      rel,
      () => new GetObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel) }),
      notFound,
    );
    if (!res?.Body) return undefined;
    const bytes = await res.Body.transformToByteArray();
    return { bytes: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), etag: res.ETag ?? "" };
  }

  /** A conditional PUT: the new ETag, or null when the server refused the condition (412). */
  #putIf: (rel: string, body: string | Buffer, condition: PutCondition) => Promise<string | null> = async (rel, body, condition) => {
    try {
      const res = await this.#put(rel, body, condition);
      return (res as { ETag?: string } | undefined)?.ETag ?? "";
    } catch (err) {
      if ((err as TidemarkError).cause && isPreconditionFailed((err as TidemarkError).cause as S3Failure)) return null;
      throw err;
    }
  };

  #deleteKey = async (rel: string): Promise<void> => {
    // https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObject.html
    await this.#send("delete", rel, () => new DeleteObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel) }));
  };

  /** Resolves while this writer's lease is certainly its own; throws E_LOCKED otherwise. */
  async #fence(): Promise<void> {
    await this.#lease?.ensureValid();
  }

  /**
   * The check before an ack, after the write landed: a lease that ran out meanwhile makes the
   * write unacknowledged, and this writer stops (what it wrote is an unacknowledged change, as
   * after a crash between the write and the ack, which the version rules rewind).
   */
  async #fenceAck(): Promise<void> {
    try {
      await this.#fence();
    } catch (err) {
      this.#lease?.abandon(err as TidemarkError);
      throw err;
    }
  }

  /**
   * PUTs a key that must not exist: with `If-None-Match: *` where the server honours it. A 412
   * is this writer's own earlier attempt (the same bytes are there) or another writer's object:
   * then this writer has lost the backup.
   */
  async #putNew(rel: string, bytes: Buffer): Promise<void> {
    if (!this.#conditions || !fences(this.#conditions)) {
      await this.#put(rel, bytes);
      return;
    }
    if ((await this.#putIf(rel, bytes, { IfNoneMatch: "*" })) !== null) return;
    const there = await this.#get(rel, true);
    if (there?.equals(bytes)) return;
    throw this.#lease ? this.#lease.fenced(rel) : new TidemarkError("E_LOCKED", `${this.location}: another writer wrote ${rel}`);
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

  // ------------------------------------------------------------ the contract

  async create(): Promise<void> {
    if ((await this.#list("", 1)).length > 0) {
      throw new TidemarkError("E_EXISTS", `${this.location} is not empty and holds no backup`, { hint: "give init a new prefix" });
    }
  }

  async readDocument(name: DocumentName): Promise<Buffer | undefined> {
    const got = await this.#getTagged(name, true);
    this.#docEtags.set(name, got?.etag ?? null);
    return got?.bytes;
  }

  async writeDocument(name: DocumentName, bytes: Buffer): Promise<void> {
    await this.#fence();
    const c = this.#conditions;
    const seen = this.#docEtags.get(name);
    // Replaced only if it is still what this writer last saw: a writer that lost the backup
    // cannot overwrite the next one's manifest. Where the server cannot say, a plain PUT.
    const condition: PutCondition | null =
      !c || seen === undefined ? null : seen === null ? (c.ifNoneMatch ? { IfNoneMatch: "*" } : null) : c.ifMatch === "quoted" || c.ifMatch === "unquoted" ? { IfMatch: etagFor(seen, c) } : null;
    if (!condition) {
      const res = (await this.#put(name, bytes, { ContentType: "application/json" })) as { ETag?: string } | undefined;
      this.#docEtags.set(name, res?.ETag ?? null);
    } else {
      let etag = await this.#putIf(name, bytes, condition);
      if (etag === null) {
        const there = await this.#getTagged(name, true);
        if (!there?.bytes.equals(bytes)) throw this.#lease ? this.#lease.fenced(name) : new TidemarkError("E_LOCKED", `${this.location}: another writer wrote ${name}`);
        etag = there.etag;
      }
      this.#docEtags.set(name, etag);
    }
    await this.#fenceAck();
  }

  async lock(): Promise<WriterLock> {
    const conditions = (this.#conditions = await probeConditions(this.#putIf, this.#deleteKey));
    const fencing = describeConditions(conditions);
    if (!fences(conditions)) this.#log.warn({ fencing }, "this S3-compatible server ignores conditional writes: one writer at a time is the operator's promise (see docs/format.md)");
    const store = conditionalLeaseStore(conditions, this.#putIf, () => this.#readLease(), () => this.#deleteKey(LEASE));
    const lease = new Lease(store, this.location, this.#log, { ...(this.#loc.leaseMs && { ttlMs: this.#loc.leaseMs }) }, fencing);
    await lease.acquire();
    this.#lease = lease;
    return {
      check() {
        if (lease.lost) throw lease.lost;
      },
      release: async () => {
        this.#lease = null;
        await lease.release().catch((err: unknown) => this.#log.warn({ err }, "could not release the writer lease; it expires by itself"));
      },
    };
  }

  /** Who holds the writer lease, and how the server fences writers, as the holder found it. */
  async writer(): Promise<{ holder?: string; expiresAt?: number; fencing?: string }> {
    const lease = await this.#readLease();
    if (!lease?.record) return { fencing: this.#conditions ? describeConditions(this.#conditions) : "not known while no writer runs (each writer probes the server at open)" };
    const r = lease.record;
    return { holder: describe(r), expiresAt: r.expiresAt, ...(r.fencing && { fencing: r.fencing }) };
  }

  async #readLease(): Promise<{ record: LeaseRecord | null; etag: string } | null> {
    const got = await this.#getTagged(LEASE, true);
    if (!got) return null;
    return { record: parseLeaseRecord(got.bytes), etag: got.etag };
  }

  async listGenerations(): Promise<GenerationListing[]> {
    const objects = await this.#list("", Infinity);
    this.#logs.clear();
    this.#blobs = [];
    // Probe objects a writer killed mid-probe left behind: tidied by the writer.
    const probes = objects.filter((o) => o.key.startsWith(".probe-")).map((o) => o.key);
    if (this.#lease && probes.length > 0) await this.#deleteKeys(probes);
    for (const o of objects) {
      if (o.key.startsWith(SNAPSHOT_PREFIX)) this.#blobs.push({ name: o.key.slice(SNAPSHOT_PREFIX.length), size: o.size });
      const m = LOG_KEY_RE.exec(o.key);
      if (!m) continue;
      const id = Number(m[1]);
      const segments = this.#logs.get(id) ?? [];
      const last = segments.at(-1);
      segments.push({ key: o.key, seq: Number(m[2]), start: last ? last.start + last.size : 0, size: o.size });
      this.#logs.set(id, segments);
    }
    // A generation exists once its first object does (a deletion cut short may leave others).
    for (const [id, segments] of this.#logs) if (segments[0]?.seq !== 0) this.#logs.delete(id);
    return [...this.#logs].map(([id, s]) => ({ id, size: s.reduce((n, x) => n + x.size, 0) })).sort((a, b) => a.id - b.id);
  }

  async *readLog(id: number, from: number, to: number): AsyncGenerator<LogChunk> {
    const segments = this.#logs.get(id);
    if (!segments) throw vanished(DRIVER_NAME, "list", `${this.location}/log/${padded(id)}`, { code: "ENOENT" });
    const wanted = segments.filter((s) => s.start + s.size > from && s.start < to);
    // Fetched in order and in parallel, up to PREFETCH requests and PREFETCH_BYTES ahead.
    const inFlight: Promise<Buffer | undefined>[] = [];
    let next = 0;
    let ahead = 0;
    for (const s of wanted) {
      while (next < wanted.length && (inFlight.length === 0 || (inFlight.length < PREFETCH && ahead + wanted[next]!.size <= PREFETCH_BYTES))) {
        ahead += wanted[next]!.size;
        const p = this.#logObject(wanted[next++]!.key);
        p.catch(() => {}); // awaited in turn below
        inFlight.push(p);
      }
      const bytes = await inFlight.shift()!;
      ahead -= s.size;
      if (!bytes) throw vanished(DRIVER_NAME, "get", `${this.location}/${s.key}`, { code: "ENOENT" });
      const lo = Math.max(from, s.start) - s.start;
      const hi = Math.min(to, s.start + bytes.length) - s.start;
      yield { segment: `${this.location}/${s.key}`, offset: s.start + lo, segmentStart: s.start, bytes: bytes.subarray(lo, Math.max(lo, hi)), segmentEnd: true };
    }
  }

  /** A log object's bytes: from the reader's cache, else a GET (kept in the cache while there is room). */
  async #logObject(rel: string): Promise<Buffer | undefined> {
    const cached = this.#logCache.get(rel);
    if (cached) return cached;
    const bytes = await this.#get(rel, true);
    // Two reads of one object at once (a status beside a stream) keep it once.
    if (bytes && !this.#writable && !this.#logCache.has(rel) && this.#logCacheBytes + bytes.length <= LOG_CACHE_BYTES) {
      this.#logCache.set(rel, bytes);
      this.#logCacheBytes += bytes.length;
    }
    return bytes;
  }

  async append(id: number, bytes: Buffer): Promise<void> {
    const segments = this.#logs.get(id);
    const last = segments?.at(-1);
    if (!segments || !last) throw new BackendError(DRIVER_NAME, "append", `${this.location}/log/${padded(id)}`, "no such generation");
    const key = `log/${padded(id)}/${padded(last.seq + 1)}.tml`;
    await this.#fence();
    await this.#putNew(key, bytes);
    await this.#fenceAck();
    segments.push({ key, seq: last.seq + 1, start: last.start + last.size, size: bytes.length });
  }

  async truncate(id: number): Promise<void> {
    throw new BackendError(DRIVER_NAME, "truncate", `${this.location}/log/${padded(id)}`, "appends are atomic on S3; there is no torn tail to drop");
  }

  async createGeneration(id: number, bytes: Buffer): Promise<void> {
    const key = `log/${padded(id)}/${padded(0)}.tml`;
    await this.#fence();
    await this.#putNew(key, bytes);
    await this.#fenceAck();
    this.#logs.set(id, [{ key, seq: 0, start: 0, size: bytes.length }]);
  }

  async deleteGeneration(id: number): Promise<void> {
    await this.#fence();
    const keys = (await this.#list(`log/${padded(id)}/`, Infinity)).map((o) => o.key);
    // The first object last: until it goes, the generation is whole or listed as garbage.
    await this.#deleteKeys(keys.slice(1).reverse());
    await this.#deleteKeys(keys.slice(0, 1));
    this.#logs.delete(id);
  }

  async putBlob(name: string, source: AsyncIterable<Uint8Array>): Promise<number> {
    const rel = SNAPSHOT_PREFIX + name;
    // Blob names are new and random (the core's), so no writer can shadow another's blob; a
    // blob counts only once an acknowledged record names it.
    await this.#fence();
    let size = 0;
    const counted = async function* () {
      for await (const chunk of source) {
        size += chunk.length;
        yield chunk;
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
    await this.#fenceAck();
    return size;
  }

  async *openBlob(name: string): AsyncGenerator<Buffer> {
    const rel = SNAPSHOT_PREFIX + name;
    const where = `${this.location}/${rel}`;
    let body: AsyncIterable<Uint8Array> | undefined;
    try {
      const res = await this.#send<{ Body?: AsyncIterable<Uint8Array> }>("get", rel, () => new GetObjectCommand({ Bucket: this.#loc.bucket, Key: this.#key(rel) }), true);
      body = res?.Body;
    } catch (err) {
      throw vanished(DRIVER_NAME, "get", where, err);
    }
    if (!body) throw vanished(DRIVER_NAME, "get", where, { code: "ENOENT" });
    try {
      for await (const chunk of body) yield Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    } catch (err) {
      throw vanished(DRIVER_NAME, "get", where, err);
    }
  }

  async listBlobs(): Promise<BlobListing[]> {
    const cached = this.#blobs;
    this.#blobs = null;
    if (cached) return cached;
    return (await this.#list(SNAPSHOT_PREFIX, Infinity)).map((o) => ({ name: o.key.slice(SNAPSHOT_PREFIX.length), size: o.size }));
  }

  async deleteBlob(name: string): Promise<void> {
    await this.#fence();
    await this.#deleteKey(SNAPSHOT_PREFIX + name);
  }

  async close(): Promise<void> {
    this.#logCache.clear();
    this.#logCacheBytes = 0;
    this.#client?.destroy();
    this.#client = null;
  }
}

/** An ETag in the form the server's `If-Match` matches. */
function etagFor(etag: string, c: Conditions): string {
  const bare = etag.replace(/^"|"$/g, "");
  return c.ifMatch === "unquoted" ? bare : `"${bare}"`;
}
