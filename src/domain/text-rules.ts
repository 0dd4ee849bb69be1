/**
 * The text rules for identifiers callers choose (user ids, org ids, roles) are declared in the
 * proto (sessions/v1/rules.proto: `clean_text` and `identifier`) and enforced on every request by
 * protovalidate in the request pipeline. This module applies the same rules where no request is
 * validated: the claims of a signed access token, which verify answers with (hasSessionClaims).
 * Verify is the hot path, and protovalidate's CEL costs about 2 µs a rule (four per identifier,
 * three identifiers a token); these regular expressions a fraction of that.
 * test/unit/request-rules.test.ts holds the two equal.
 *
 * - no control characters (C0, DEL, C1), line or paragraph separators, or bidirectional formatting
 *   characters;
 * - no other invisible format character (Unicode category Cf) but the zero-width joiner, and that
 *   only between emoji; no character that displays as nothing;
 * - well-formed Unicode (a JSON payload can spell a lone surrogate);
 * - not empty, no leading or trailing whitespace, at most `maxCharacters` characters (code points).
 */
const controlCharacters = /[\p{Cc}\p{Zl}\p{Zp}]/u;
const bidiFormatting = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/u;
/** Unicode format characters (category Cf) but the zero-width joiner: invisible in an identifier. */
const invisibleFormatting = /(?!\u200D)\p{Cf}/u;
/** A zero-width joiner not between two emoji (an emoji may carry a skin tone or VS16 before it). */
const strayJoiner = /(^|[^\p{So}\p{Sk}\uFE0F])\u200D|\u200D([^\p{So}]|$)/u;
/** Characters that display as nothing: CGJ, Hangul fillers, the blank Braille pattern; a leading variation selector. */
const blankLetters = /[\u034F\u115F\u1160\u2800\u3164\uFFA0]|^[\uFE00-\uFE0F]/u;
// rules.proto spells this [\s\p{Z}] for RE2, which differs from JavaScript's \s only in VT and
// U+FEFF, both refused above anyway.
const edgeWhitespace = /^\s|\s$/u;

/** Number of characters (code points) in `value`. */
export function characterCount(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}

/** Whether `value` is an identifier create would have accepted (`clean_text` and `identifier`, not empty, at most `maxCharacters`). */
export function isIdentifier(value: string, maxCharacters: number): boolean {
  return (
    value !== "" &&
    value.isWellFormed() &&
    !controlCharacters.test(value) &&
    !bidiFormatting.test(value) &&
    !invisibleFormatting.test(value) &&
    !strayJoiner.test(value) &&
    !blankLetters.test(value) &&
    !edgeWhitespace.test(value) &&
    characterCount(value) <= maxCharacters
  );
}

/** `value` cut to its first `maxCharacters` characters (never splitting one). */
export function cutToCharacters(value: string, maxCharacters: number): string {
  return characterCount(value) > maxCharacters ? [...value].slice(0, maxCharacters).join("") : value;
}
