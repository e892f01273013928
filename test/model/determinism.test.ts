import { describe, expect, it } from "vitest";
import { checkDeterministic } from "../../src/model/determinism.js";
import { TidemarkError } from "../../src/util/errors.js";

describe("deterministic replay", () => {
  it.each([
    ["INSERT INTO t VALUES (random())", /random\(\)/],
    ["INSERT INTO t VALUES (RANDOMBLOB(16))", /randomblob\(\)/],
    ["UPDATE t SET at = datetime('now')", /datetime/],
    ["UPDATE t SET at = date()", /date/],
    ["UPDATE t SET at = strftime('%s')", /strftime/],
    ["UPDATE t SET at = strftime('%s', 'NOW')", /strftime/],
    ["UPDATE t SET at = julianday('now', '+1 day')", /julianday/],
    ["INSERT INTO t (at) VALUES (CURRENT_TIMESTAMP)", /CURRENT_TIMESTAMP/],
    ["CREATE TABLE t (x, at DEFAULT current_date)", /CURRENT_DATE/],
    ["SELECT unixepoch('now')", /unixepoch/],
  ])("refuses %s", (sql, what) => {
    let err: unknown;
    try {
      checkDeterministic(sql);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TidemarkError);
    expect((err as TidemarkError).code).toBe("E_NONDETERMINISTIC");
    expect((err as TidemarkError).message).toMatch(what);
    expect((err as TidemarkError).hint).toMatch(/parameter/);
  });

  it.each([
    "INSERT INTO t VALUES ('random() is just text', 'now')",
    "UPDATE t SET at = datetime(?)",
    "UPDATE t SET at = datetime('2024-01-01 10:00:00', '+1 day')",
    "UPDATE t SET at = strftime('%s', ?)",
    'SELECT "random(" FROM t',
    "INSERT INTO t VALUES (1) -- random() in a comment",
    "INSERT INTO t VALUES ('it''s CURRENT_TIMESTAMP')",
    "UPDATE t SET x = my_randomizer(1)",
  ])("allows %s", (sql) => {
    expect(() => checkDeterministic(sql)).not.toThrow();
  });
});
