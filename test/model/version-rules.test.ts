import { describe, expect, it } from "vitest";
import { GapError, StaleError } from "../../src/util/errors.js";
import { decide, reconcile } from "../../src/model/version-rules.js";

describe("version rules", () => {
  const head = { version: 10, prevVersion: 9 };
  const rewound = { version: 10, prevVersion: null };

  it.each([
    ["the next change appends", head, 11, false, "append"],
    ["the next change with a snapshot is a new base", head, 11, true, "new-base"],
    ["a repeat of the head rewinds it first", head, 10, false, "rewind-then-append"],
    ["a repeat of the head with a snapshot rewinds it first", head, 10, true, "rewind-then-append"],
    ["a snapshot far ahead is a new base", head, 500, true, "new-base"],
    ["the first change of an empty backup appends", { version: 0, prevVersion: null }, 1, false, "append"],
    ["a snapshot seeds an empty backup", { version: 0, prevVersion: null }, 42, true, "new-base"],
  ] as const)("%s", (_name, h, version, hasSnapshot, action) => {
    expect(decide(h, { version, hasSnapshot })).toBe(action);
  });

  it("a redo without a snapshot of a base that skipped versions would leave a gap: refused", () => {
    const base = { version: 50, prevVersion: 10 };
    expect(() => decide(base, { version: 50, hasSnapshot: false })).toThrow(GapError);
    expect(() => decide(base, { version: 50, hasSnapshot: false })).toThrow(/redoes version 50, which was stored with a snapshot after version 10/);
    expect(decide(base, { version: 50, hasSnapshot: true })).toBe("rewind-then-append");
  });

  it("a gap is refused with a hint to send a new base", () => {
    let err: GapError | undefined;
    try {
      decide(head, { version: 12, hasSnapshot: false });
    } catch (e) {
      err = e as GapError;
    }
    expect(err).toBeInstanceOf(GapError);
    expect(err!.message).toContain("version 11 is missing");
    expect(err!.hint).toMatch(/^send the host database as a new base at its current version N: a change with a snapshot/);
  });

  it.each([
    ["an older version", head, 9],
    ["a second rewind in a row", rewound, 10],
    ["an older version with a snapshot", head, 3],
  ])("%s is stale", (_name, h, version) => {
    expect(() => decide(h, { version, hasSnapshot: version === 3 })).toThrow(StaleError);
    try {
      decide(h, { version, hasSnapshot: false });
    } catch (e) {
      expect((e as StaleError).hint).toBe("restore the host database; do not continue");
    }
  });

  it("reconciles a host at start-up", () => {
    expect(reconcile(10, head)).toBe("in-sync");
    expect(reconcile(9, head)).toBe("rewind");
    expect(() => reconcile(9, rewound)).toThrow(StaleError);
    expect(() => reconcile(8, head)).toThrow(StaleError);
    expect(() => reconcile(12, head)).toThrow(GapError);
    expect(() => reconcile(9, { version: 10, prevVersion: 4 })).toThrow(StaleError);
    expect(reconcile(0, { version: 0, prevVersion: null })).toBe("in-sync");
  });
});
