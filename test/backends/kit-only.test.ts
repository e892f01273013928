/**
 * A backend written only against tidemark/backend-kit (test/helpers/memory-storage.ts) passes
 * the whole conformance suite: the kit is all a backend author needs.
 */
import { backendConformance } from "../helpers/backend-conformance.js";
import { createMemoryStorage, memoryStores } from "../helpers/memory-storage.js";
import { registerBackend } from "../../src/backup/registry.js";

registerBackend("mem", createMemoryStorage);
let n = 0;

backendConformance("kit-only (in memory)", {
  newLocation: () => `mem://backup-${++n}`,
  exclusiveWriter: true,
  async overwrite(location, target, bytes) {
    const store = memoryStores.get(location)!;
    if ("blob" in target) {
      bytes.copy(store.blobs.get(target.blob)!, target.offset);
      return;
    }
    let at = target.offset;
    for (const piece of store.logs.get(target.generation)!) {
      if (at < piece.length) {
        bytes.copy(piece, at);
        return;
      }
      at -= piece.length;
    }
  },
});
