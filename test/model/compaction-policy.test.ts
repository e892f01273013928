import { describe, expect, it } from "vitest";
import { MIN_LOG_BYTES_FOR_RATIO, compactionDue, nextCompactionAt } from "../../src/model/compaction-policy.js";

const state = { changesSince: 0, lastAt: 0, logBytes: 0, snapshotBytes: 0, records: 100 };

describe("compaction policy", () => {
  it("is due after N changes", () => {
    expect(compactionDue({ everyChanges: 10 }, { ...state, changesSince: 9 }, 0)).toBeNull();
    expect(compactionDue({ everyChanges: 10 }, { ...state, changesSince: 10 }, 0)).toMatch(/10 changes/);
  });

  it("is due after T, but only if something changed", () => {
    const policy = { everyMs: 60_000 };
    expect(compactionDue(policy, { ...state, changesSince: 5, lastAt: 1000 }, 60_999)).toBeNull();
    expect(compactionDue(policy, { ...state, changesSince: 5, lastAt: 1000 }, 61_000)).toMatch(/60 s since/);
    expect(compactionDue(policy, { ...state, changesSince: 0, lastAt: 1000 }, 999_999)).toBeNull();
    expect(nextCompactionAt(30_000, policy, { ...state, lastAt: 1000 })).toBe(61_000);
    expect(nextCompactionAt(90_000, policy, { ...state, lastAt: 1000 })).toBe(90_000);
    expect(nextCompactionAt(0, { everyChanges: 5 }, state)).toBeNull();
  });

  it("is due when the log outgrows R times the base, above a floor", () => {
    const policy = { logRatio: 4 };
    const base = 10 * MIN_LOG_BYTES_FOR_RATIO;
    expect(compactionDue(policy, { ...state, snapshotBytes: base, logBytes: 4 * base }, 0)).toBeNull();
    expect(compactionDue(policy, { ...state, snapshotBytes: base, logBytes: 4 * base + 1 }, 0)).toMatch(/logRatio 4/);
    // A tiny database does not compact on every change just because its base is small.
    expect(compactionDue(policy, { ...state, snapshotBytes: 100, logBytes: 5000 }, 0)).toBeNull();
    expect(compactionDue(policy, { ...state, snapshotBytes: 0, logBytes: 5 * MIN_LOG_BYTES_FOR_RATIO }, 0)).toMatch(/logRatio/);
  });

  it("never compacts a log of a base and one change", () => {
    expect(compactionDue({ everyChanges: 1 }, { ...state, changesSince: 50, records: 2 }, 0)).toBeNull();
  });
});
