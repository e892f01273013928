/**
 * Reads the `.dbak` file format of Core Lightning's Python backup plugin (its file backend).
 *
 * All integers are big-endian. A 512-byte header starts with u32 format version (1), u32 head
 * version, u64 next-write offset, u32 previous version, u64 last-record offset and u64 record
 * count; zeros pad the rest. Records follow from offset 512: u32 payload length, u32 version,
 * u8 type (1 transaction, 2 snapshot), then the payload: UTF-8 statements joined by NUL bytes,
 * or a whole SQLite file. There are no checksums.
 *
 * The original's rewind only moved the header back, and it opened the file for appending, so
 * the replacement landed *after* the rewound record: a file can hold 5, 5 again, then 6. Only
 * the last record of each version is live. Its header offsets are wrong after such a rewind,
 * so this reader trusts only the head version and walks the records themselves.
 */
import fs from "node:fs";
import { CorruptError, TidemarkError } from "../util/errors.js";
import { readAll } from "../util/durable-fs.js";

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

/** The header field tidemark uses; the offsets and previous version are wrong after a rewind. */
export interface DbakHeader {
  /** The version of the last acknowledged change. */
  readonly headVersion: number;
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
  /** The live records in order: one per version, from the first base up to the head. */
  readonly records: readonly DbakRecord[];
  /** Records superseded by a later record of the same version (the rewind bug). */
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
  const superseded: DbakRecord[] = [];
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
    place(file, chain, superseded, record);
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
  return { file, bytes, header, records: chain, superseded, beyondHead, tornTail };
}

const CORRUPT_HINT = "the file is damaged; import an intact copy of it (the node's other backups, a replica)";

function readHeader(fd: number, file: string, bytes: number): DbakHeader {
  if (bytes < DBAK_HEADER_BYTES) {
    throw new CorruptError(file, `the file is ${bytes} bytes, shorter than the 512-byte .dbak header`, { offset: 0 }, {
      hint: "is this the .dbak file of Core Lightning's backup plugin? Its backup.lock names it as backend_url",
    });
  }
  const head = Buffer.alloc(8);
  readAll(fd, head, 0);
  const format = head.readUInt32BE(0);
  if (format !== DBAK_FORMAT_VERSION) {
    throw new CorruptError(file, `file format version ${format}, expected ${DBAK_FORMAT_VERSION}: not a backup plugin .dbak file`, { offset: 0 }, {
      hint: "give the .dbak file named in the old backup.lock (backend_url)",
    });
  }
  return { headVersion: head.readUInt32BE(4) };
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

/** Adds a record to the chain of live records: a record that repeats a version replaces it. */
function place(file: string, chain: DbakRecord[], superseded: DbakRecord[], record: DbakRecord): void {
  const v = record.version;
  const fail = (what: string) => new CorruptError(file, what, { offset: record.offset, version: v }, { hint: CORRUPT_HINT });
  if (v === 0) throw fail("version 0: versions start at 1");
  if (chain.at(-1)?.version === v) superseded.push(chain.pop()!);
  const last = chain.at(-1);
  if (!last) {
    if (record.kind === "transaction" && v !== 1) {
      throw fail(`the first record is a transaction at version ${v}: a backup starts with a snapshot or with version 1`);
    }
  } else if (v !== last.version + 1 && !(record.kind === "snapshot" && v > last.version)) {
    throw fail(
      `version ${v} after version ${last.version}: each record repeats the previous version (a rewind), ` +
        "follows it by one, or is a snapshot",
    );
  }
  chain.push(record);
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
