import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { InputError } from "../../src/util/errors.js";
import { CORE_LIGHTNING_RULES, Rewriter, loadRules } from "../../src/ops/rewrite.js";
import { tmpDir } from "../helpers/tmp.js";

describe("statement rewriting", () => {
  it("the core-lightning set repairs the two pre-4090 expansion bugs and counts them", () => {
    const r = new Rewriter(CORE_LIGHTNING_RULES);
    expect(r.rewriteSql("UPDATE outputs SET status=2, reserved_til=1891733WHERE prev_out_tx=x")).toBe(
      "UPDATE outputs SET status=2, reserved_til=1891733 WHERE prev_out_tx=x",
    );
    expect(r.rewriteSql("UPDATE channels SET peer_id=12WHERE channels.id=3")).toBe("UPDATE channels SET peer_id=12 WHERE channels.id=3");
    expect(r.rewriteSql("UPDATE outputs SET reserved_til=5 WHERE x")).toBe("UPDATE outputs SET reserved_til=5 WHERE x");
    expect(r.rewrite({ sql: "reserved_til=1WHERE", params: [1] })).toEqual({ sql: "reserved_til=1 WHERE", params: [1] });
    expect(r.counts()).toEqual({ "cln-reserved-til-where": 2, "cln-peer-id-where": 1 });
  });

  it("loads user rules from a JSON file", () => {
    const file = path.join(tmpDir(), "rules.json");
    fs.writeFileSync(file, JSON.stringify([{ name: "fix-typo", pattern: "SELEKT", replacement: "SELECT" }]));
    const r = new Rewriter(loadRules(file));
    expect(r.rewriteSql("SELEKT 1; SELEKT 2")).toBe("SELECT 1; SELECT 2");
    expect(r.counts()).toEqual({ "fix-typo": 1 });
  });

  it.each([
    ["[{]", /invalid JSON/],
    ['{"name":"x"}', /expected a JSON array/],
    ['[{"name":"x","pattern":"(","replacement":""}]', /rule \[0\]\.pattern: Invalid regular expression/],
    ['[{"name":"","pattern":"a","replacement":""}]', /rule \[0\]\.name/],
    ['[{"name":"x","pattern":"a","replacement":""},{"name":"x","pattern":"b","replacement":""}]', /rule \[1\]\.name: "x" is used twice/],
    ['[{"name":"x","pattern":"a","replacement":1}]', /rule \[0\]\.replacement/],
    ['[{"name":"x","pattern":"a","replacement":"","flags":"i"}]', /unknown field "flags"/],
  ])("rejects a bad rules file: %s", (text, message) => {
    const file = path.join(tmpDir(), "rules.json");
    fs.writeFileSync(file, text);
    expect(() => loadRules(file)).toThrow(InputError);
    expect(() => loadRules(file)).toThrow(message);
  });

  it("names a missing rules file and the built-in sets", () => {
    expect(() => loadRules("/no/such/rules.json")).toThrow(/neither a built-in set nor a readable file/);
  });
});
