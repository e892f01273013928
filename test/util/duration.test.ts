import { describe, expect, it } from "vitest";
import { isDuration, parseDuration } from "../../src/util/duration.js";
import { InputError } from "../../src/util/errors.js";

describe("durations", () => {
  it("parses every unit, decimals and a space before the unit", () => {
    expect(parseDuration("100ms")).toBe(100);
    expect(parseDuration("30s")).toBe(30_000);
    expect(parseDuration("5m")).toBe(300_000);
    expect(parseDuration("1.5h")).toBe(5_400_000);
    expect(parseDuration("14 d")).toBe(14 * 86_400_000);
  });

  it("gives whole milliseconds, which a backup's settings can hold", () => {
    expect(parseDuration("0.7d")).toBe(60_480_000);
    expect(parseDuration("4.35m")).toBe(261_000);
  });

  it("adds compound durations written largest unit first", () => {
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("1d12h")).toBe(36 * 3_600_000);
    expect(parseDuration("1s500ms")).toBe(1500);
  });

  for (const text of ["", "soon", "5", "-5s", "5 days", "1e3s", ".5s", " 5s", "30m1h", "1h1h", "1h30"]) {
    it(`refuses ${JSON.stringify(text)}`, () => {
      expect(isDuration(text)).toBe(false);
      expect(() => parseDuration(text)).toThrow(InputError);
      expect(() => parseDuration(text)).toThrow(`expected a duration like 30s, 15m, 6h, 1d or 1h30m, got ${JSON.stringify(text)}`);
    });
  }
});
