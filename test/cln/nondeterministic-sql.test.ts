/**
 * Why the Core Lightning doors accept SQL that reads the clock: lightningd's real db_write
 * traffic has it (a migration stamps paid invoices with strftime('%s', 'now')). The plugin,
 * `cln import` and a daemon database with `rules: core-lightning` take it as it is, so the
 * recording replays through them (test/cln/recording.test.ts); everywhere else it is refused.
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { checkDeterministic } from "../../src/model/determinism.js";
import { TidemarkError } from "../../src/util/errors.js";

const RECORDING = path.join(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/core-lightning/db-write-recording-v26.06.6.jsonl");

describe("lightningd's real traffic and the non-determinism check", () => {
  it("holds exactly one statement the check refuses: the paid-invoice migration", () => {
    const refused: string[] = [];
    for (const line of fs.readFileSync(RECORDING, "utf8").split("\n")) {
      if (line.trim() === "") continue;
      const entry = JSON.parse(line) as { writes?: string[] };
      for (const sql of entry.writes ?? []) {
        try {
          checkDeterministic(sql);
        } catch (err) {
          expect((err as TidemarkError).code).toBe("E_NONDETERMINISTIC");
          refused.push(sql);
        }
      }
    }
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatch(/^UPDATE invoices\s+SET paid_timestamp = strftime\('%s', 'now'\) WHERE/);
  });
});
