/**
 * The change model from DESIGN.md: one host transaction, reported before the host commits.
 */

/** A bound parameter. A number binds as better-sqlite3 binds a JavaScript number (REAL); a bigint binds as an INTEGER. */
export type Param = number | string | null | bigint | Uint8Array;

/** Positional (`?`) or named (`@name`, `:name`, `$name`) parameters. */
export type Params = readonly Param[] | { readonly [name: string]: Param };

/** One SQL statement: text alone, or text with parameters. */
export type Statement = string | { readonly sql: string; readonly params?: Params };

/** The bytes of a snapshot (a whole SQLite file), read once as a stream. */
export type SnapshotSource = AsyncIterable<Uint8Array>;

/** A change as a host reports it. */
export interface ChangeInput {
  /** The host's data version after this change: an integer ≥ 1. */
  readonly version: number;
  /** Milliseconds since the epoch; defaults to now. */
  readonly timestamp?: number;
  /** A complete SQLite database image applied before the transaction. */
  readonly snapshot?: SnapshotSource;
  /** Statements applied in order. */
  readonly transaction?: readonly Statement[];
  /**
   * Set when the change continues the backup's head version rather than making a new one:
   * statements the host committed after that version without bumping its data version (Core
   * Lightning's PRAGMAs around a table rebuild). Its version equals the head; it carries no
   * snapshot; a restore replays it after the records of that version before it.
   */
  readonly continuation?: boolean;
  /** Pages a database committed, for a captured backup (`tidemark watch`); never with a transaction. */
  readonly captured?: CapturedPages;
}

/** A snapshot held by a backend, opened as often as needed. */
export interface StoredSnapshot {
  /** Size of the SQLite file in bytes. */
  readonly size: number;
  /**
   * Streams the SQLite file's bytes, verifying every checksum on the way. With `reuse`, each
   * buffer yielded is valid only until the next is asked for (one buffer serves every frame).
   */
  open(options?: { readonly reuse?: boolean }): AsyncIterable<Buffer>;
}

/** A change as a backend returns it. */
export interface StoredChange {
  readonly version: number;
  readonly timestamp: number;
  readonly snapshot?: StoredSnapshot;
  readonly transaction?: readonly Statement[];
  /** Set for a continuation: a further record of the same version as the change before it. */
  readonly continuation?: true;
  /** Pages written by the database's own commits (captured backups only: `tidemark watch`). */
  readonly captured?: CapturedPages;
}

/**
 * Where a capture stands in a WAL: the salts of the WAL's current cycle and the last commit
 * frame read (0: none yet), with the cumulative checksum SQLite computed up to that frame.
 */
export interface WalPosition {
  readonly salt1: number;
  readonly salt2: number;
  readonly frame: number;
  readonly checksum1: number;
  readonly checksum2: number;
}

/** One page a captured change wrote: its number (from 1) and its bytes (the page size). */
export interface CapturedPage {
  readonly pgno: number;
  readonly data: Uint8Array;
}

/**
 * What one captured change holds: the pages that one or more consecutive committed WAL
 * transactions wrote (the last copy of each), and the database size after the last of them.
 * Applied by writing each page at `(pgno - 1) * pageSize`, then cutting the file to
 * `dbPages * pageSize`.
 */
export interface CapturedPages {
  readonly pageSize: number;
  /** The database size in pages after the change (the last commit frame's). */
  readonly dbPages: number;
  /** How many committed WAL transactions the change covers (1 unless the capture fell behind). */
  readonly transactions: number;
  /** Where the capture stands after this change, so that a restart can continue from it. */
  readonly wal: WalPosition;
  readonly pages: readonly CapturedPage[];
}

/** Returns the SQL text of a statement. */
export function statementSql(st: Statement): string {
  return typeof st === "string" ? st : st.sql;
}
