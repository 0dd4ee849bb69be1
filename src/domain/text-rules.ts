import { AppError } from "./errors.js";

/**
 * What the service accepts in the strings callers choose (user ids, org ids, roles, user agents).
 * These end up in SQL, in signed tokens and in other people's logs and screens, so:
 *
 * - no control characters (C0, DEL, C1: NUL, ESC, CR/LF, …), no line or paragraph separators
 *   (U+2028, U+2029: line breaks too) and no bidirectional formatting characters (embeddings,
 *   overrides, isolates and marks, which make a string display as another);
 * - identifiers also have no other invisible format characters (zero-width space, word joiner, soft
 *   hyphen, …: `alice` and `alice` + U+200B would look alike), but for the zero-width joiner that
 *   emoji sequences need;
 * - well-formed Unicode (a lone surrogate cannot be stored as UTF-8 and would come back changed);
 * - identifiers additionally have no leading or trailing whitespace: `alice ` is not `alice`, and a
 *   caller who sends it has a bug we would rather report than store;
 * - lengths count characters (Unicode code points), not bytes or UTF-16 units.
 */
const controlCharacters = /[\p{Cc}\p{Zl}\p{Zp}]/u;
const bidiFormatting = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/u;
/** Unicode format characters (category Cf) but the zero-width joiner: invisible in an identifier. */
const invisibleFormatting = /(?!\u200D)\p{Cf}/u;
const edgeWhitespace = /^\s|\s$/u;

/** Number of characters (code points) in `value`. */
export function characterCount(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}

function checkText(field: string, value: string, maxCharacters: number): void {
  if (!value.isWellFormed()) throw invalid(field, `${field} is not well-formed Unicode`);
  if (controlCharacters.test(value)) throw invalid(field, `${field} must not contain control characters or line breaks`);
  if (bidiFormatting.test(value)) throw invalid(field, `${field} must not contain bidirectional formatting characters`);
  if (characterCount(value) > maxCharacters) throw invalid(field, `${field} must be at most ${maxCharacters} characters`);
}

/** An identifier the caller chose (user id, org id, role): non-empty, clean, within `maxCharacters`. */
export function checkIdentifier(field: string, value: string, maxCharacters: number): string {
  if (value === "") throw invalid(field, `${field} must not be empty`);
  checkText(field, value, maxCharacters);
  if (invisibleFormatting.test(value)) throw invalid(field, `${field} must not contain invisible format characters`);
  if (edgeWhitespace.test(value)) throw invalid(field, `${field} must not start or end with whitespace`);
  return value;
}

/** Free text (a user agent): clean, and cut to `maxCharacters` rather than refused when longer. */
export function cleanFreeText(field: string, value: string, maxCharacters: number): string {
  const cut = characterCount(value) > maxCharacters ? [...value].slice(0, maxCharacters).join("") : value;
  checkText(field, cut, maxCharacters);
  return cut;
}

function invalid(field: string, message: string): AppError {
  return new AppError("invalid_request", message, field);
}
