import { create, createRegistry, ScalarType, type DescMessage } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { RE2JS } from "@bufbuild/re2";
import { describe, expect, it } from "vitest";
import { SessionService } from "../../gen/sessions/v1/sessions_pb.js";
import { file_sessions_v1_rules } from "../../gen/sessions/v1/rules_pb.js";
import { schemaRegexMatch, toNativeRegExp } from "../../src/transport/regex-match.js";

/**
 * The request rules' regular expressions run on the platform's RegExp instead of protovalidate's
 * RE2 engine (src/transport/regex-match.ts). This holds the two equal on every pattern the schema
 * uses, over strings made of the characters the rules are about.
 */

/** Every pattern protovalidate asks about while validating each request with every text field set. */
function schemaPatterns(): string[] {
  const seen = new Set<string>();
  const validator = createValidator({
    registry: createRegistry(file_sessions_v1_rules),
    regexMatch: (pattern, against) => {
      seen.add(pattern);
      return schemaRegexMatch(pattern, against);
    },
  });
  for (const method of SessionService.methods) {
    const schema: DescMessage = method.input;
    const message = create(schema) as unknown as Record<string, unknown>;
    for (const field of schema.fields) {
      if (field.fieldKind === "scalar" && field.scalar === ScalarType.STRING) {
        if (field.oneof) message[field.oneof.localName] = { case: field.localName, value: "x" };
        else message[field.localName] = "x";
      }
    }
    validator.validate(schema, message as never);
  }
  return [...seen];
}

// Letters the rules look at: controls, line ends and Unicode spaces, bidi and other format
// characters, the joiner with and without emoji around it, variation selectors, blank letters.
const alphabet = [
  "a", "Z", "0", "_", "-", " ", "\t", "\n", "\v", "\f", "\r", "\u0085", "\u00A0", "\u1680", "\u2028", "\u2029", "\u3000",
  "\u200B", "\u200C", "\u200D", "\u200E", "\u200F", "\u202A", "\u202E", "\u2066", "\u2069", "\u061C", "\uFEFF", "\u00AD",
  "\u{1F600}", "\u{1F3FB}", "\u2764", "\uFE0F", "\uFE00", "\u034F", "\u115F", "\u1160", "\u2800", "\u3164", "\uFFA0", "\u0301",
  "é", "ß", "\u{E0001}", "\u0000", "\u007F", "\u009F", "s", "e", "H", "V", "I",
];

/** A deterministic stream of test strings: every length 0–6 mix of the alphabet, drawn by a fixed PRNG. */
function* samples(count: number): Generator<string> {
  let seed = 0x2545f491;
  const next = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8);
  yield "";
  yield "ses_01HABCDEF0123456789ABCDEFG";
  yield "US";
  for (let i = 0; i < count; i++) {
    let s = "";
    for (let n = next() % 7; n > 0; n--) s += alphabet[next() % alphabet.length];
    yield s;
  }
}

describe("schema regexes on the platform RegExp", () => {
  const patterns = schemaPatterns();

  it("finds the schema's patterns: the text rules' six and the two string.pattern rules", () => {
    expect(patterns.length).toBeGreaterThanOrEqual(8);
    expect(patterns).toContain("^ses_[0-9A-HJKMNP-TV-Z]{26}$");
  });

  it.each(patterns)("%s: runs natively and matches what RE2 matches", (pattern) => {
    const native = toNativeRegExp(pattern);
    expect(native).toBeDefined();
    const re2 = RE2JS.compile(pattern);
    for (const s of samples(20_000)) {
      if (native?.test(s) !== re2.test(s)) expect({ pattern, s: JSON.stringify(s), native: native?.test(s) }).toEqual({ pattern, s: JSON.stringify(s), native: re2.test(s) });
    }
  });

  it("leaves to RE2 what JavaScript reads differently", () => {
    for (const pattern of ["a.b", "(?i)abc", "\\d+", "[]a]", "\\bword", "\\pL", "\\x41", "a{", "[[:alpha:]]"]) {
      expect(toNativeRegExp(pattern), pattern).toBeUndefined();
    }
    // …and still answers them, through RE2.
    expect(schemaRegexMatch("a.b", "a\nb")).toBe(false);
    expect(schemaRegexMatch("(?i)abc", "ABC")).toBe(true);
    expect(schemaRegexMatch("^\\d+$", "٣")).toBe(false);
  });

  it("spells out RE2's \\s, which matches neither VT nor Unicode spaces", () => {
    const edge = toNativeRegExp("^\\s|\\s$");
    expect(edge?.test("a\v")).toBe(false);
    expect(edge?.test("a\u00A0")).toBe(false);
    expect(edge?.test("a\t")).toBe(true);
    expect(toNativeRegExp("[\\s\\p{Z}]")?.test("\u00A0")).toBe(true);
  });
});
