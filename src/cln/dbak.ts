/**
 * Reads the `.dbak` file format of Core Lightning's Python backup plugin (its file backend).
 *
 * All integers are big-endian. A 512-byte header starts with u32 format version (1), u32 head
 * version, u64 next-write offset, u32 previous version, u64 last-record offset and u64 record
 * count; zeros pad the rest. Records follow from offset 512: u32 payload length, u32 version,
 * u8 type (1 transaction, 2 snapshot), then the payload: UTF-8 statements joined by NUL bytes,
 * or a whole SQLite file. There are no checksums.
 *
 * A version can have several records, for two reasons the file tells apart:
 * - Continuations. Real lightningd reports some writes without bumping data_version (PRAGMAs
 *   around a table rebuild), and the original appended them as further records of the version:
 *   a fresh node's file holds 1, 1, 2, 2, 3, … Its own restore replays every record in order.
 * - Rewinds. The original's rewind only moved the header back, and it opened the file for
 *   appending, so the replacement landed *after* the rewound record (5, 5 again, then 6). A
 *   record written just before a crash, before the header acknowledged it, is left in the same
 *   way. Its own restore replays those too, which replays a rolled-back transaction.
 * The header's next-write offset counts only the records the original still held, so the bytes
 * of the records after the first one that lie beyond it are exactly the rewound (or never
 * acknowledged) ones. When there are none, every record is live, as the original's restore has
 * it; otherwise the repeated records that add up to them are left out (see {@link rewoundRecords}).
 */
import fs from "node:fs";
import { CorruptError, TidemarkError } from "../util/errors.js";
import { readAll } from "../util/durable-fs.js";
import { bumpsDataVersion } from "./node-db.js";

/** Size of the file header. */
const DBAK_HEADER_BYTES = 512;
/** Size of a record's header: length, version, type. */
const DBAK_RECORD_HEADER_BYTES = 9;
/** The only file format version the original wrote. */
const DBAK_FORMAT_VERSION = 1;

const TYPE_TRANSACTION = 1;
const TYPE_SNAPSHOT = 2;
const SQLITE_MAGIC = Buffer.from("SQLite format 3\0", "latin1");
const SNAPSHOT_CHUNK = 1 << 20;

/** The header fields tidemark uses. */
export interface DbakHeader {
  /** The version of the last acknowledged change. */
  readonly headVersion: number;
  /** Where the original would write its next record, had it not opened the file for appending: 512 plus the bytes of the records it still held. */
  readonly nextOffset: number;
}

/** One record of the file, located but not read. */
export interface DbakRecord {
  /** Byte offset of the record header. */
  readonly offset: number;
  readonly version: number;
  readonly kind: "transaction" | "snapshot";
  /** Payload bytes, which start at `offset + 9`. */
  readonly length: number;
}

/** A validated `.dbak` file: the records that make up its history, and what was left out. */
export interface DbakScan {
  readonly file: string;
  readonly bytes: number;
  readonly header: DbakHeader;
  /** The live records in order, from the first base up to the head; a version's continuations follow its first record. */
  readonly records: readonly DbakRecord[];
  /** Records of a repeated version that the original rewound, or wrote and never acknowledged. */
  readonly superseded: readonly DbakRecord[];
  /** Whole records after the head: written, but the header never acknowledged them. */
  readonly beyondHead: readonly DbakRecord[];
  /** A record cut short at the end of the file, after the head: a write interrupted by a crash. */
  readonly tornTail: { readonly offset: number; readonly bytes: number } | null;
}

/**
 * Checks a whole `.dbak` file and locates the records to import, reading every header and
 * every transaction's text but not the snapshots' bytes. Throws E_CORRUPT naming the byte
 * offset for anything malformed, and E_INPUT if the file cannot be read.
 */
export function scanDbak(file: string): DbakScan {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (err) {
    throw new TidemarkError("E_INPUT", `cannot open ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      hint: "give the .dbak file named in the old backup.lock (backend_url)",
      cause: err,
    });
  }
  try {
    return scanOpen(fd, file);
  } finally {
    fs.closeSync(fd);
  }
}

function scanOpen(fd: number, file: string): DbakScan {
  const bytes = fs.fstatSync(fd).size;
  const header = readHeader(fd, file, bytes);
  const chain: DbakRecord[] = [];
  const recordHeader = Buffer.alloc(DBAK_RECORD_HEADER_BYTES);
  let tornTail: DbakScan["tornTail"] = null;
  const reachedHead = () => (chain.at(-1)?.version ?? 0) >= header.headVersion;

  for (let offset = DBAK_HEADER_BYTES; offset < bytes; ) {
    const left = bytes - offset;
    if (left < DBAK_RECORD_HEADER_BYTES) {
      if (!reachedHead()) throw truncated(file, offset, `the record header needs 9 bytes but the file ends after ${left}`, header, chain);
      tornTail = { offset, bytes: left };
      break;
    }
    readAll(fd, recordHeader, offset);
    const length = recordHeader.readUInt32BE(0);
    const version = recordHeader.readUInt32BE(4);
    const type = recordHeader.readUInt8(8);
    if (type !== TYPE_TRANSACTION && type !== TYPE_SNAPSHOT) {
      throw new CorruptError(file, `unknown record type ${type} (1 is a transaction, 2 a snapshot)`, { offset, version }, { hint: CORRUPT_HINT });
    }
    if (length > left - DBAK_RECORD_HEADER_BYTES) {
      const what = `the record holds ${length} payload bytes but the file ends after ${left - DBAK_RECORD_HEADER_BYTES}`;
      if (!reachedHead()) throw truncated(file, offset, what, header, chain, version);
      tornTail = { offset, bytes: left };
      break;
    }
    const record: DbakRecord = { offset, version, kind: type === TYPE_SNAPSHOT ? "snapshot" : "transaction", length };
    checkPayload(fd, file, record);
    checkOrder(file, chain, record);
    chain.push(record);
    offset += DBAK_RECORD_HEADER_BYTES + length;
  }

  // The original writes a record before the header that acknowledges it, so records past the
  // head were never acknowledged: lightningd did not commit them.
  const cut = chain.findIndex((r) => r.version > header.headVersion);
  const beyondHead = cut < 0 ? [] : chain.splice(cut);
  const last = chain.at(-1)?.version ?? 0;
  if (last !== header.headVersion) {
    throw new CorruptError(file, `the records end at version ${last}, but the header's head version is ${header.headVersion}`, { offset: bytes }, {
      hint: "the file is incomplete; import the most recent copy of it",
    });
  }
  const end = last === 0 ? DBAK_HEADER_BYTES : chain.at(-1)!.offset + DBAK_RECORD_HEADER_BYTES + chain.at(-1)!.length;
  const superseded = rewoundRecords(fd, file, chain, end, header.nextOffset);
  const records = chain.filter((r) => !superseded.has(r));
  const repeatedSnapshot = records.find((r, i) => r.kind === "snapshot" && records[i - 1]?.version === r.version);
  if (repeatedSnapshot) {
    throw new CorruptError(file, "a snapshot record repeats the version of the record before it, and the header does not count it as rewound", { offset: repeatedSnapshot.offset, version: repeatedSnapshot.version }, { hint: CORRUPT_HINT });
  }
  return { file, bytes, header, records, superseded: chain.filter((r) => superseded.has(r)), beyondHead, tornTail };
}

/** How many repeated records {@link rewoundRecords} searches through for a set that adds up; beyond this, it refuses. */
const MAX_SEARCHED = 20;


/**
 * The records of `chain` that the original no longer held: the `excess` bytes by which `end`
 * (where the last record ends) lies beyond the header's `nextOffset`, as whole records among
 * those of repeated versions. None when `excess` is 0.
 * A repeated record that carries lightningd's data_version bump again redoes its version, so
 * the record before it was rolled back: those are tried first. Otherwise the one set of
 * repeated records whose sizes add up to `excess` and leave every version a record is taken;
 * no such set, or more than one, is refused as E_CORRUPT.
 */
function rewoundRecords(fd: number, file: string, chain: readonly DbakRecord[], end: number, nextOffset: number): Set<DbakRecord> {
  const excess = end - nextOffset;
  if (excess === 0) return new Set();
  const size = (r: DbakRecord) => DBAK_RECORD_HEADER_BYTES + r.length;
  const refuse = (what: string) =>
    new CorruptError(file, what, { offset: DBAK_HEADER_BYTES }, {
      hint: "restore this file with the Python plugin's backup-cli restore, then start a tidemark backup from the restored database with tidemark cln init",
    });
  if (excess < 0) {
    throw new CorruptError(file, `the header's next-write offset is ${-excess} bytes beyond the end of the last record`, { offset: end }, {
      hint: "the file is incomplete; import the most recent copy of it",
    });
  }
  const repeated = chain.filter((r, i) => chain[i - 1]?.version === r.version || chain[i + 1]?.version === r.version);
  const redone = chain.filter((r, i) => {
    const next = chain[i + 1];
    return next?.version === r.version && next.kind === "transaction" && bumpsDataVersion(readStatements(fd, file, next));
  });
  if (redone.reduce((n, r) => n + size(r), 0) === excess && leavesEveryVersion(chain, new Set(redone))) return new Set(redone);
  if (repeated.length > MAX_SEARCHED) {
    throw refuse(`${excess} bytes of records were rewound, among ${repeated.length} records of repeated versions: too many to tell which`);
  }
  const found: Set<DbakRecord>[] = [];
  for (let mask = 1; mask < 1 << repeated.length && found.length < 2; mask++) {
    const pick = repeated.filter((_, j) => mask & (1 << j));
    if (pick.reduce((n, r) => n + size(r), 0) !== excess) continue;
    const set = new Set(pick);
    if (leavesEveryVersion(chain, set)) found.push(set);
  }
  if (found.length !== 1) {
    const versions = [...new Set(repeated.map((r) => r.version))].join(", ");
    throw refuse(
      found.length === 0
        ? `the header says ${excess} bytes of records were rewound, but no set of the records of repeated versions (${versions || "none"}) adds up to that`
        : `the header says ${excess} bytes of records were rewound, and more than one set of the records of repeated versions (${versions}) adds up to that`,
    );
  }
  return found[0]!;
}

/** Whether leaving `out` out of `chain` still leaves a record of every version in it. */
function leavesEveryVersion(chain: readonly DbakRecord[], out: ReadonlySet<DbakRecord>): boolean {
  const all = new Set(chain.map((r) => r.version));
  const kept = new Set(chain.filter((r) => !out.has(r)).map((r) => r.version));
  return kept.size === all.size;
}

const CORRUPT_HINT = "the file is damaged; import an intact copy of it (the node's other backups, a replica)";

function readHeader(fd: number, file: string, bytes: number): DbakHeader {
  if (bytes < DBAK_HEADER_BYTES) {
    throw new CorruptError(file, `the file is ${bytes} bytes, shorter than the 512-byte .dbak header`, { offset: 0 }, {
      hint: "is this the .dbak file of Core Lightning's backup plugin? Its backup.lock names it as backend_url",
    });
  }
  const head = Buffer.alloc(16);
  readAll(fd, head, 0);
  const format = head.readUInt32BE(0);
  if (format !== DBAK_FORMAT_VERSION) {
    throw new CorruptError(file, `file format version ${format}, expected ${DBAK_FORMAT_VERSION}: not a backup plugin .dbak file`, { offset: 0 }, {
      hint: "give the .dbak file named in the old backup.lock (backend_url)",
    });
  }
  return { headVersion: head.readUInt32BE(4), nextOffset: Number(head.readBigUInt64BE(8)) };
}

function truncated(file: string, offset: number, what: string, header: DbakHeader, chain: DbakRecord[], version?: number): CorruptError {
  const upTo = chain.at(-1)?.version ?? 0;
  return new CorruptError(
    file,
    `truncated record: ${what}; the header's head version is ${header.headVersion} but the file holds whole records only up to version ${upTo}`,
    { offset, ...(version !== undefined && { version }) },
    { hint: "the file is incomplete (a partial copy?); import the full file. Nothing was imported" },
  );
}

/** Reads a transaction's text (so a bad byte is reported now, not half-way through an import), or a snapshot's magic. */
function checkPayload(fd: number, file: string, record: DbakRecord): void {
  if (record.kind === "transaction") {
    readStatements(fd, file, record);
    return;
  }
  const magic = Buffer.alloc(SQLITE_MAGIC.length);
  if (record.length >= magic.length) readAll(fd, magic, record.offset + DBAK_RECORD_HEADER_BYTES);
  if (!magic.equals(SQLITE_MAGIC)) {
    throw new CorruptError(file, "the snapshot record is not a SQLite database", { offset: record.offset, version: record.version }, { hint: CORRUPT_HINT });
  }
}

/** Checks that a record may follow the ones before it: it repeats the last version, follows it by one, or is a snapshot. */
function checkOrder(file: string, chain: readonly DbakRecord[], record: DbakRecord): void {
  const v = record.version;
  const fail = (what: string) => new CorruptError(file, what, { offset: record.offset, version: v }, { hint: CORRUPT_HINT });
  if (v === 0) throw fail("version 0: versions start at 1");
  const last = chain.at(-1);
  if (last?.version === v) return;
  if (!last) {
    if (record.kind === "transaction" && v !== 1) {
      throw fail(`the first record is a transaction at version ${v}: a backup starts with a snapshot or with version 1`);
    }
  } else if (v !== last.version + 1 && !(record.kind === "snapshot" && v > last.version)) {
    throw fail(
      `version ${v} after version ${last.version}: each record repeats the previous version (a continuation or a rewind), ` +
        "follows it by one, or is a snapshot",
    );
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Reads the statements of a transaction record; `fd` is the open .dbak file, `file` its name for errors. */
export function readStatements(fd: number, file: string, record: DbakRecord): string[] {
  if (record.length === 0) return [];
  const payload = Buffer.allocUnsafe(record.length);
  readAll(fd, payload, record.offset + DBAK_RECORD_HEADER_BYTES);
  let text: string;
  try {
    text = utf8.decode(payload);
  } catch {
    throw new CorruptError(file, "the transaction is not valid UTF-8", { offset: record.offset, version: record.version }, { hint: CORRUPT_HINT });
  }
  return text.split("\0");
}

/** Streams a snapshot record's SQLite file in 1 MiB chunks, without reading it whole. */
export async function* readSnapshot(file: string, record: DbakRecord): AsyncGenerator<Buffer> {
  const handle = await fs.promises.open(file, "r");
  try {
    const end = record.offset + DBAK_RECORD_HEADER_BYTES + record.length;
    for (let at = record.offset + DBAK_RECORD_HEADER_BYTES; at < end; ) {
      const chunk = Buffer.allocUnsafe(Math.min(SNAPSHOT_CHUNK, end - at));
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, at);
      if (bytesRead === 0) throw new CorruptError(file, "the file ended inside the snapshot", { offset: at, version: record.version });
      yield bytesRead === chunk.length ? chunk : chunk.subarray(0, bytesRead);
      at += bytesRead;
    }
  } finally {
    await handle.close();
  }
}

/** Whether `file` is a regular file that starts like a `.dbak` (format version 1). */
export function looksLikeDbak(file: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return false;
    throw err;
  }
  try {
    if (!fs.fstatSync(fd).isFile()) return false;
    const head = Buffer.alloc(4);
    return fs.readSync(fd, head, 0, 4, 0) === 4 && head.readUInt32BE(0) === DBAK_FORMAT_VERSION;
  } finally {
    fs.closeSync(fd);
  }
}
