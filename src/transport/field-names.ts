/**
 * Whether a name a caller sent (a query parameter, a JSON key, a path of them) may be repeated in an
 * error message and its `field`. Callers paste secrets where names go (`?<access token>`,
 * `{"rt_…": 1}`); an error must not carry them back into logs, screenshots and proxies. A name is
 * repeated only when it looks like a field name: ASCII letters, digits and `_`, not starting with a
 * digit, at most 32 characters. The bound is what tells the two apart: every field name here is
 * far shorter, and every bearer secret the service issues is longer (`rt_` and `sk_live_` + 43
 * base64url characters, `whsec_` + 32 base64 ones, a JWT with its dots), and base64url alone would
 * often pass the character test. A new secret of 32 characters or fewer must change it;
 * test/unit/field-names.test.ts holds both sides.
 */
const fieldLike = /^[A-Za-z_][A-Za-z0-9_]{0,31}$/;

/** A name (a query parameter, a JSON key) that may be echoed. */
export function isFieldLike(name: string): boolean {
  return fieldLike.test(name);
}

/** A path of names (`session.created_at`, `data[1].status`) that may be echoed: each of them field-like. */
export function isFieldPath(path: string): boolean {
  return path.split(".").every((segment) => isFieldLike(segment.replace(/(\[\d{1,9}\])+$/, "")));
}

/**
 * A decoder's message without the names it quotes that do not look like field names: protobuf-es
 * says `key "<what was sent>" is unknown` (and `duplicate object key "…"`), and connect-es passes
 * that on as the error's message.
 */
export function withoutUnsafeNames(message: string): string {
  // protobuf-es quotes the key without escaping it: the name runs to the last quote of its phrase.
  return message.replace(/key "(.*)"( is unknown|$)/s, (quoted, name: string, rest: string) => (isFieldLike(name) ? quoted : `key "…"${rest}`));
}
