import { AppError } from "./errors.js";
import type { PageAfter } from "./model.js";
import { equalBytes, hmac } from "./secrets.js";

/**
 * Cursors are opaque to callers and tamper-evident: `cur_<payload>.<mac>`, where the MAC covers the
 * payload and the filters it was issued for (tenant, user, status), so a forged cursor or one
 * reused with other filters is rejected.
 */
const prefix = "cur_";
const macBytes = 16;

export function encodeCursor(key: Buffer, binding: string[], after: PageAfter): string {
  const payload = Buffer.from(JSON.stringify([after.createdAt.getTime(), after.id])).toString("base64url");
  return `${prefix}${payload}.${hmac(key, payload, ...binding).subarray(0, macBytes).toString("base64url")}`;
}

export function decodeCursor(key: Buffer, binding: string[], cursor: string): PageAfter {
  const invalid = () => new AppError("invalid_cursor", "the cursor is invalid or was issued for other filters", "cursor");
  if (!cursor.startsWith(prefix) || cursor.length > 200) throw invalid();
  const [payload, mac, ...rest] = cursor.slice(prefix.length).split(".");
  if (payload === undefined || mac === undefined || rest.length > 0) throw invalid();
  // Compared as text, so each cursor has one spelling: base64url decoding ignores the spare bits of
  // a last character, and a decoded comparison would accept its siblings. (The MAC covers the
  // payload's text, so the payload has one spelling too.)
  const expected = Buffer.from(hmac(key, payload, ...binding).subarray(0, macBytes).toString("base64url"));
  if (!equalBytes(Buffer.from(mac), expected)) throw invalid();
  const parsed: unknown = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  if (!Array.isArray(parsed) || typeof parsed[0] !== "number" || typeof parsed[1] !== "string") throw invalid();
  return { createdAt: new Date(parsed[0]), id: parsed[1] };
}
