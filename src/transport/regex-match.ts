import { RE2JS } from "@bufbuild/re2";

/**
 * The regex matcher protovalidate uses for the proto's `string.pattern` rules and CEL `matches()`.
 * Its default is an RE2 engine written in JavaScript: on a create, the text rules' Unicode classes
 * took about a tenth of the service's CPU. The platform's RegExp does the same match many times
 * faster. Only patterns from our own proto reach this (never a caller's), and each is used natively
 * only when it is written in the subset on which RE2 and JavaScript's `u` mode agree:
 * literals, classes, `^ $ |`, groups, quantifiers, `\x{…}`, `\p{…}`/`\P{…}` and `\s` (which this
 * spells out, because JavaScript's `\s` also matches VT and Unicode spaces). Anything else (`.`,
 * flags, other escapes) stays with RE2. test/unit/regex-match.test.ts compares the two on every
 * pattern the schema uses.
 */
export function schemaRegexMatch(pattern: string, against: string): boolean {
  let matcher = compiled.get(pattern);
  if (matcher === undefined) {
    // protovalidate's own bound: a rule could build its pattern from input.
    if (compiled.size >= 1024) compiled.clear();
    compiled.set(pattern, (matcher = toNativeRegExp(pattern) ?? RE2JS.compile(pattern)));
  }
  return matcher.test(against);
}

const compiled = new Map<string, { test(against: string): boolean }>();

/** RE2's `\s`. */
const re2Space = "\\t\\n\\f\\r ";

/** `pattern` as a JavaScript RegExp that matches exactly what RE2 matches; undefined outside the shared subset. */
export function toNativeRegExp(pattern: string): RegExp | undefined {
  let out = "";
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === "\\") {
      const next = pattern[i + 1];
      const braced = /^[xpP]\{[0-9A-Za-z_]+\}/.exec(pattern.slice(i + 1));
      if (braced !== null) {
        out += next === "x" ? `\\u{${braced[0].slice(2, -1)}}` : `\\${braced[0]}`;
        i += braced[0].length;
      } else if (next === "s") {
        out += inClass ? re2Space : `[${re2Space}]`;
        i += 1;
      } else {
        return undefined;
      }
    } else if (c === "[" && !inClass) {
      inClass = true;
      out += c;
      if (pattern[i + 1] === "^") out += pattern[++i];
      // A `]` first in a class is a literal in RE2, and closes an empty class in JavaScript.
      if (pattern[i + 1] === "]") return undefined;
    } else if (c === "]" && inClass) {
      inClass = false;
      out += c;
    } else if (inClass ? c === "[" : c === "." || (c === "(" && pattern[i + 1] === "?")) {
      return undefined;
    } else {
      out += c;
    }
  }
  try {
    return new RegExp(out, "u");
  } catch {
    return undefined;
  }
}
