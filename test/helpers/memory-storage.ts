/**
 * A backend written only against `tidemark/backend-kit` (src/backend-kit.ts), as a third-party
 * author would write one: it keeps its bytes in this process's memory, one piece per append
 * like an object store. It proves the kit is enough, by passing the whole conformance suite
 * (test/backends/kit-only.test.ts). It imports nothing else of tidemark's.
 */
import {
  BackendError,
  TidemarkError,
  vanished,
  type BlobListing,
  type DocumentName,
  type GenerationListing,
  type LogChunk,
  type Storage,
  type StorageFactory,
  type WriterLock,
} from "../../src/backend-kit.js";

/** What one `mem:` location holds. */
export interface MemoryStore {
  documents: Map<string, Buffer>;
  /** Each generation's log, one buffer per append. */
  logs: Map<number, Buffer[]>;
  blobs: Map<string, Buffer>;
  lockedBy: symbol | null;
}

/** Every `mem:` location of this process, by URL. */
export const memoryStores = new Map<string, MemoryStore>();

/** The `mem:` backend's factory (register it with registerBackend("mem", …)). */
export const createMemoryStorage: StorageFactory = async (url) => new MemoryStorage(url.href);

class MemoryStorage implements Storage {
  readonly kind = "mem";
  readonly location: string;
  readonly atomicAppends = true;

  constructor(location: string) {
    this.location = location;
  }

  #store(): MemoryStore {
    let s = memoryStores.get(this.location);
    if (!s) {
      s = { documents: new Map(), logs: new Map(), blobs: new Map(), lockedBy: null };
      memoryStores.set(this.location, s);
    }
    return s;
  }

  async create(): Promise<void> {
    const s = this.#store();
    if (s.documents.size + s.logs.size + s.blobs.size > 0) throw new TidemarkError("E_EXISTS", `${this.location} is not empty`);
  }

  async readDocument(name: DocumentName): Promise<Buffer | undefined> {
    return this.#store().documents.get(name);
  }

  async writeDocument(name: DocumentName, bytes: Buffer): Promise<void> {
    this.#store().documents.set(name, Buffer.from(bytes));
  }

  async lock(): Promise<WriterLock> {
    const s = this.#store();
    if (s.lockedBy) throw new TidemarkError("E_LOCKED", `${this.location} is locked by another writer, PID ${process.pid} (this process)`);
    const me = Symbol("writer");
    s.lockedBy = me;
    return {
      check() {},
      release: async () => {
        if (s.lockedBy === me) s.lockedBy = null;
      },
    };
  }

  async listGenerations(): Promise<GenerationListing[]> {
    return [...this.#store().logs].map(([id, pieces]) => ({ id, size: pieces.reduce((n, p) => n + p.length, 0) })).sort((a, b) => a.id - b.id);
  }

  async *readLog(id: number, from: number, to: number): AsyncGenerator<LogChunk> {
    const pieces = this.#store().logs.get(id);
    if (!pieces) throw vanished(this.kind, "read", `${this.location} log ${id}`, { code: "ENOENT" });
    let start = 0;
    for (const [i, piece] of [...pieces].entries()) {
      const end = start + piece.length;
      if (end > from && start < to) {
        const lo = Math.max(from, start) - start;
        const hi = Math.min(to, end) - start;
        yield { segment: `${this.location} log ${id} piece ${i}`, offset: start + lo, segmentStart: start, bytes: piece.subarray(lo, hi), segmentEnd: true };
      }
      start = end;
    }
  }

  async append(id: number, bytes: Buffer): Promise<void> {
    const pieces = this.#store().logs.get(id);
    if (!pieces) throw new BackendError(this.kind, "append", this.location, `no generation ${id}`);
    pieces.push(Buffer.from(bytes));
  }

  async truncate(): Promise<void> {
    throw new BackendError(this.kind, "truncate", this.location, "appends are atomic here");
  }

  async createGeneration(id: number, bytes: Buffer): Promise<void> {
    this.#store().logs.set(id, [Buffer.from(bytes)]);
  }

  async deleteGeneration(id: number): Promise<void> {
    this.#store().logs.delete(id);
  }

  async putBlob(name: string, source: AsyncIterable<Uint8Array>): Promise<number> {
    const parts: Buffer[] = [];
    for await (const chunk of source) parts.push(Buffer.from(chunk));
    const blob = Buffer.concat(parts);
    this.#store().blobs.set(name, blob);
    return blob.length;
  }

  async *openBlob(name: string): AsyncGenerator<Buffer> {
    const blob = this.#store().blobs.get(name);
    if (!blob) throw vanished(this.kind, "read", `${this.location} blob ${name}`, { code: "ENOENT" });
    // Uneven pieces, as a network would deliver them.
    for (let i = 0; i < blob.length; i += 65_521) yield blob.subarray(i, i + 65_521);
  }

  async listBlobs(): Promise<BlobListing[]> {
    return [...this.#store().blobs].map(([name, b]) => ({ name, size: b.length })).sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async deleteBlob(name: string): Promise<void> {
    this.#store().blobs.delete(name);
  }

  async close(): Promise<void> {}
}
