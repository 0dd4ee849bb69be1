import { AppError } from "../domain/errors.js";
import { isFieldLike, isFieldPath } from "./field-names.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Whether a Content-Type names UTF-8 JSON and nothing else. Each of its lines (several are joined
 * with ", ") must be `application/json`, and no charset parameter may name another encoding: JSON
 * is UTF-8 (RFC 8259), and reading it as UTF-8 when the client says otherwise reads something the
 * client did not send. No charset, or `charset=utf-8` in any case, quoted or not (`utf8` too), is
 * UTF-8. Parameters are read as RFC 9110 writes them: a `;`, `,` or `charset=` inside a quoted
 * value is part of that value. What cannot be read for certain is refused: a `charset` without a
 * value, a quote left open, text after a closing quote, a bare value that is not a token
 * (`foo=bar charset=latin1`), and `charset*` (RFC 8187's spelling of a charset).
 */
export function isUtf8Json(header: string): boolean {
  for (let i = 0; ; i++) {
    // A line's media type, up to its first parameter or the next line.
    const typeEnd = indexOfAny(header, ";,", i);
    if (header.slice(i, typeEnd).trim().toLowerCase() !== "application/json") return false;
    i = typeEnd;
    while (header[i] === ";") {
      const nameEnd = indexOfAny(header, "=;,", i + 1);
      const name = header.slice(i + 1, nameEnd).trim().toLowerCase();
      i = nameEnd;
      if (name === "charset*") return false;
      if (header[i] !== "=") {
        if (name === "charset") return false;
        continue;
      }
      i++;
      while (header[i] === " " || header[i] === "\t") i++;
      let value = "";
      if (header[i] === '"') {
        for (i++; i < header.length && header[i] !== '"'; i++) value += header[i] === "\\" ? (header[++i] ?? "") : header[i];
        if (i >= header.length) return false; // an unterminated quote: where the value ends is a guess
        for (i++; header[i] === " " || header[i] === "\t"; i++);
        if (i < header.length && header[i] !== ";" && header[i] !== ",") return false;
      } else {
        const end = indexOfAny(header, ";,", i);
        value = header.slice(i, end).trim();
        if (!tokenPattern.test(value)) return false;
        i = end;
      }
      if (name === "charset" && !["utf-8", "utf8"].includes(value.toLowerCase())) return false;
    }
    if (i >= header.length) return true;
    // header[i] is ",": another line follows.
  }
}

/** RFC 9110's token: a parameter value written without quotes. */
const tokenPattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** The first index at or after `from` of any of `chars`, or the length. */
function indexOfAny(text: string, chars: string, from: number): number {
  for (let i = from; i < text.length; i++) if (chars.includes(text[i] as string)) return i;
  return text.length;
}

/**
 * Reads a JSON request body strictly: the bytes must be UTF-8 (no silent U+FFFD for bad bytes), no
 * string may escape a lone surrogate (`"\udc00"`: a protobuf string is UTF-8, which cannot hold one,
 * and binary protobuf refuses it too), and no object may name a key twice, at any depth (JSON.parse
 * keeps the last one, so `{"user_id": "a", "user_id": "b"}` would mean whatever the parser happens
 * to do; other parsers keep the first).
 */
export function parseStrictJson(body: Buffer): unknown {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw new AppError("invalid_request", "the request body is not valid UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new AppError("invalid_request", "malformed JSON body");
  }
  const duplicate = findDuplicateKey(text);
  if (duplicate !== undefined) {
    if (isFieldLike(duplicate)) throw new AppError("invalid_request", `the key "${duplicate}" appears twice in one object`, duplicate);
    throw new AppError("invalid_request", "a key appears twice in one object");
  }
  // Text that is UTF-8 can only spell a lone surrogate with a \u escape: most bodies are not walked.
  const illFormed = text.includes("\\u") ? illFormedStringAt(value, "") : undefined;
  if (illFormed !== undefined) {
    const field = illFormed !== "" && isFieldPath(illFormed) ? illFormed : undefined;
    throw new AppError("invalid_request", `${field ?? "a string in the request body"} is not well-formed Unicode (a lone surrogate)`, field);
  }
  return value;
}

/** Where in `value` a string (a key or a value) is not well-formed Unicode: its path ("" for the top), or undefined. */
function illFormedStringAt(value: unknown, path: string): string | undefined {
  if (typeof value === "string") return value.isWellFormed() ? undefined : path;
  if (typeof value !== "object" || value === null) return undefined;
  for (const [key, element] of Object.entries(value)) {
    const at = Array.isArray(value) ? `${path}[${key}]` : path ? `${path}.${key}` : key;
    if (!key.isWellFormed()) return at;
    const found = illFormedStringAt(element, at);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * The first key that appears twice in one object of `text`, which must be valid JSON. Keys compare
 * after unescaping (`"a"` and `"\u0061"` are the same key).
 */
export function findDuplicateKey(text: string): string | undefined {
  // One entry per open container: the keys seen so far for an object, null for an array.
  const stack: (Set<string> | null)[] = [];
  let expectsKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */) {
      stack.push(new Set());
      expectsKey = true;
    } else if (c === 0x5b /* [ */) {
      stack.push(null);
      expectsKey = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      expectsKey = false;
    } else if (c === 0x2c /* , */) {
      expectsKey = stack.at(-1) instanceof Set;
    } else if (c === 0x22 /* " */) {
      let end = i + 1;
      let hasEscape = false;
      while (text.charCodeAt(end) !== 0x22) {
        if (text.charCodeAt(end) === 0x5c /* \ */) {
          hasEscape = true;
          end++;
        }
        end++;
      }
      const keys = stack.at(-1);
      if (expectsKey && keys) {
        const key = hasEscape ? (JSON.parse(text.slice(i, end + 1)) as string) : text.slice(i + 1, end);
        if (keys.has(key)) return key;
        keys.add(key);
        expectsKey = false;
      }
      i = end;
    }
  }
  return undefined;
}
