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
}

/** A snapshot held by a backend, opened as often as needed. */
export interface StoredSnapshot {
  /** Size of the SQLite file in bytes. */
  readonly size: number;
  /** Streams the SQLite file's bytes, verifying every checksum on the way. */
  open(): AsyncIterable<Buffer>;
}

/** A change as a backend returns it. */
export interface StoredChange {
  readonly version: number;
  readonly timestamp: number;
  readonly snapshot?: StoredSnapshot;
  readonly transaction?: readonly Statement[];
  /** Set for a continuation: a further record of the same version as the change before it. */
  readonly continuation?: true;
}

/** Returns the SQL text of a statement. */
export function statementSql(st: Statement): string {
  return typeof st === "string" ? st : st.sql;
}
