/**
 * Applies captured pages to a SQLite file being rebuilt: what a checkpoint does with WAL
 * frames. Each page is written at `(pgno - 1) * pageSize`, then the file is cut (or extended)
 * to the database size the change ends with. The lock page is never among them (the record
 * decoder refuses it), so it is never written.
 */
import fs from "node:fs";
import type { CapturedPages } from "../model/change.js";
import { writeAll } from "../util/durable-fs.js";
import { TidemarkError } from "../util/errors.js";

/** A SQLite file open for page writes. */
export class PageFile {
  readonly #fd: number;
  readonly #path: string;

  constructor(path: string) {
    this.#path = path;
    this.#fd = fs.openSync(path, fs.existsSync(path) ? "r+" : "w+", 0o600);
  }

  /** Applies one captured change of `version`. */
  apply(c: CapturedPages, version: number): void {
    const size = fs.fstatSync(this.#fd).size;
    if (size >= 100) {
      const b = Buffer.alloc(2);
      fs.readSync(this.#fd, b, 0, 2, 16);
      const fileSize = b.readUInt16BE(0) === 1 ? 65536 : b.readUInt16BE(0);
      if (fileSize !== c.pageSize) {
        throw new TidemarkError("E_RESTORE", `captured version ${version} has ${c.pageSize}-byte pages, but the database rebuilt so far has ${fileSize}-byte pages`, {
          hint: "the application changed its page size (VACUUM); restore an earlier version, or restart tidemark watch so that it takes a fresh snapshot",
        });
      }
    }
    for (const p of c.pages) writeAll(this.#fd, p.data, (p.pgno - 1) * c.pageSize);
    fs.ftruncateSync(this.#fd, c.dbPages * c.pageSize);
  }

  /** The path written. */
  get path(): string {
    return this.#path;
  }

  close(): void {
    fs.closeSync(this.#fd);
  }
}
