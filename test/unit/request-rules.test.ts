import { create, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  CreateSessionRequestSchema,
  GetSessionRequestSchema,
  ListSessionsRequestSchema,
  RefreshSessionRequestSchema,
  RevokeSessionRequestSchema,
  RevokeSessionsRequestSchema,
  SessionService,
  VerifyTokenRequestSchema,
  WatchSessionEventsRequestSchema,
} from "../../gen/sessions/v1/sessions_pb.js";
import { characterCount, cutToCharacters, isIdentifier } from "../../src/domain/text-rules.js";
import { createRequestValidator, InvalidRequestError, type FieldViolation } from "../../src/transport/validation.js";

/**
 * The request rules the proto declares, as the pipeline enforces them (protovalidate, no server):
 * one valid fixture per request message, one field changed per case, asserting the field and the
 * rule, never the English. The same rules over REST and RPC: test/validation.test.ts.
 */

const validator = createRequestValidator(SessionService.methods.map((m) => m.input));

function violationsOf<Desc extends DescMessage>(schema: Desc, init: MessageInitShape<Desc>): FieldViolation[] {
  try {
    validator.check(schema, create(schema, init));
    return [];
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidRequestError);
    return [...(err as InvalidRequestError).violations];
  }
}

const ses = "ses_01HABCDEF0123456789ABCDEFG";
const fixtures = {
  create: { userId: "usr_01HABCDEF123456", userAgent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)", ipAddress: "203.0.113.42", country: "US", role: "admin", orgId: "org_1" },
  list: { userId: "usr_1", status: 1, limit: 20, cursor: "cur_x" },
  revokeAll: { userId: "usr_1", exceptSessionId: ses },
};

describe("valid requests pass", () => {
  it.each<[string, DescMessage, object]>([
    ["CreateSession", CreateSessionRequestSchema, fixtures.create],
    ["CreateSession with only a user id", CreateSessionRequestSchema, { userId: "u" }],
    ["CreateSession with empty optional fields", CreateSessionRequestSchema, { userId: "u", orgId: "", role: "", country: "", ipAddress: "", userAgent: "" }],
    ["ListSessions", ListSessionsRequestSchema, fixtures.list],
    ["ListSessions without filters", ListSessionsRequestSchema, {}],
    ["RevokeSessions of a user", RevokeSessionsRequestSchema, fixtures.revokeAll],
    ["RevokeSessions of every user", RevokeSessionsRequestSchema, { allUsers: true, exceptSessionId: ses }],
    ["GetSession (any id: a malformed one is 404)", GetSessionRequestSchema, { id: "ses_nope" }],
    ["RevokeSession", RevokeSessionRequestSchema, { id: ses }],
    ["VerifyToken (any token: a malformed one is valid=false)", VerifyTokenRequestSchema, { token: "x".repeat(5000) }],
    ["RefreshSession (any token: an unknown one is 401)", RefreshSessionRequestSchema, { refreshToken: "rt_nope" }],
    ["WatchSessionEvents after", WatchSessionEventsRequestSchema, { after: "evt_1.x" }],
    ["WatchSessionEvents since the first Timestamp", WatchSessionEventsRequestSchema, { since: { seconds: -62_135_596_800n } }],
    ["WatchSessionEvents since the last Timestamp", WatchSessionEventsRequestSchema, { since: { seconds: 253_402_300_799n, nanos: 999_999_999 } }],
  ])("%s", (_name, schema, init) => {
    expect(violationsOf(schema, init as never)).toEqual([]);
  });
});

describe("each declared rule, naming its field", () => {
  it.each<[string, DescMessage, object, string, string]>([
    // CreateSessionRequest
    ["user_id missing", CreateSessionRequestSchema, { ...fixtures.create, userId: "" }, "user_id", "required"],
    ["user_id of 256 characters", CreateSessionRequestSchema, { ...fixtures.create, userId: "é".repeat(256) }, "user_id", "string.max_len"],
    ["user_id with a NUL", CreateSessionRequestSchema, { ...fixtures.create, userId: "a\u0000b" }, "user_id", "text.no_control_characters"],
    ["user_id with a right-to-left override", CreateSessionRequestSchema, { ...fixtures.create, userId: "a\u202eb" }, "user_id", "text.no_bidi_formatting"],
    ["user_id with a zero-width space", CreateSessionRequestSchema, { ...fixtures.create, userId: "alice\u200b" }, "user_id", "identifier.no_invisible_formatting"],
    ["user_id with a trailing space", CreateSessionRequestSchema, { ...fixtures.create, userId: "alice " }, "user_id", "identifier.no_edge_whitespace"],
    ["user_agent with a line break", CreateSessionRequestSchema, { ...fixtures.create, userAgent: "Mozilla\r\nX-Injected: 1" }, "user_agent", "text.no_control_characters"],
    ["user_agent with a line separator", CreateSessionRequestSchema, { ...fixtures.create, userAgent: "a\u2028b" }, "user_agent", "text.no_control_characters"],
    ["user_agent with an isolate", CreateSessionRequestSchema, { ...fixtures.create, userAgent: "a\u2067b" }, "user_agent", "text.no_bidi_formatting"],
    ["ip_address not an address", CreateSessionRequestSchema, { ...fixtures.create, ipAddress: "999.1.1.1" }, "ip_address", "string.ip"],
    ["ip_address with a prefix", CreateSessionRequestSchema, { ...fixtures.create, ipAddress: "10.0.0.0/8" }, "ip_address", "string.ip"],
    ["country of three letters", CreateSessionRequestSchema, { ...fixtures.create, country: "USA" }, "country", "string.pattern"],
    ["country that upper-cases to two letters", CreateSessionRequestSchema, { ...fixtures.create, country: "ß" }, "country", "string.pattern"],
    ["device_type unknown", CreateSessionRequestSchema, { ...fixtures.create, deviceType: 99 }, "device_type", "enum.defined_only"],
    ["role of 65 characters", CreateSessionRequestSchema, { ...fixtures.create, role: "r".repeat(65) }, "role", "string.max_len"],
    ["role with a line feed", CreateSessionRequestSchema, { ...fixtures.create, role: "member\nadmin" }, "role", "text.no_control_characters"],
    ["org_id of 256 characters", CreateSessionRequestSchema, { ...fixtures.create, orgId: "o".repeat(256) }, "org_id", "string.max_len"],
    ["org_id with a leading space", CreateSessionRequestSchema, { ...fixtures.create, orgId: " org" }, "org_id", "identifier.no_edge_whitespace"],
    // ListSessionsRequest
    ["list user_id empty", ListSessionsRequestSchema, { ...fixtures.list, userId: "" }, "user_id", "string.min_len"],
    ["list user_id of 256 characters", ListSessionsRequestSchema, { ...fixtures.list, userId: "u".repeat(256) }, "user_id", "string.max_len"],
    ["list user_id with a soft hyphen", ListSessionsRequestSchema, { ...fixtures.list, userId: "al\u00adice" }, "user_id", "identifier.no_invisible_formatting"],
    ["status unspecified", ListSessionsRequestSchema, { ...fixtures.list, status: 0 }, "status", "enum.not_in"],
    ["status unknown", ListSessionsRequestSchema, { ...fixtures.list, status: 9 }, "status", "enum.defined_only"],
    ["limit 0", ListSessionsRequestSchema, { ...fixtures.list, limit: 0 }, "limit", "int32.gte_lte"],
    ["limit 101", ListSessionsRequestSchema, { ...fixtures.list, limit: 101 }, "limit", "int32.gte_lte"],
    ["cursor empty", ListSessionsRequestSchema, { ...fixtures.list, cursor: "" }, "cursor", "string.min_len"],
    // GetSessionRequest, RevokeSessionRequest
    ["get id missing", GetSessionRequestSchema, { id: "" }, "id", "required"],
    ["revoke id missing", RevokeSessionRequestSchema, { id: "" }, "id", "required"],
    // RevokeSessionsRequest
    ["neither user_id nor all_users", RevokeSessionsRequestSchema, { exceptSessionId: ses }, "user_id", "message.oneof"],
    ["both user_id and all_users", RevokeSessionsRequestSchema, { ...fixtures.revokeAll, allUsers: true }, "all_users", "message.oneof"],
    ["revoke-all user_id empty", RevokeSessionsRequestSchema, { ...fixtures.revokeAll, userId: "" }, "user_id", "string.min_len"],
    ["revoke-all user_id of 256 characters", RevokeSessionsRequestSchema, { ...fixtures.revokeAll, userId: "u".repeat(256) }, "user_id", "string.max_len"],
    ["revoke-all user_id with an ESC", RevokeSessionsRequestSchema, { ...fixtures.revokeAll, userId: "a\u001bb" }, "user_id", "text.no_control_characters"],
    ["except_session_id not a session id", RevokeSessionsRequestSchema, { ...fixtures.revokeAll, exceptSessionId: "ses_nope" }, "except_session_id", "string.pattern"],
    // VerifyTokenRequest, RefreshSessionRequest
    ["token missing", VerifyTokenRequestSchema, { token: "" }, "token", "required"],
    ["refresh_token missing", RefreshSessionRequestSchema, { refreshToken: "" }, "refresh_token", "required"],
    // WatchSessionEventsRequest
    ["both after and since", WatchSessionEventsRequestSchema, { after: "evt_1.x", since: { seconds: 1n } }, "since", "message.oneof"],
    ["since after year 9999", WatchSessionEventsRequestSchema, { since: { seconds: 253_402_300_800n } }, "since", "timestamp.gte_lte"],
    ["since before year 1", WatchSessionEventsRequestSchema, { since: { seconds: -62_135_596_801n } }, "since", "timestamp.gte_lte"],
  ])("%s", (_name, schema, init, field, rule) => {
    const [first] = violationsOf(schema, init as never);
    expect({ field: first?.field, rule: first?.rule }).toEqual({ field, rule });
  });

  it("lists every violation, not just the first", () => {
    const violations = violationsOf(CreateSessionRequestSchema, { userId: "", country: "USA", ipAddress: "x" });
    expect(violations.map((v) => [v.field, v.rule])).toEqual([
      ["user_id", "required"],
      ["ip_address", "string.ip"],
      ["country", "string.pattern"],
    ]);
  });

  it("says each in a sentence that starts with the field, and names enum values as REST spells them", () => {
    for (const v of violationsOf(CreateSessionRequestSchema, { userId: "a\u0000", userAgent: "\n", ipAddress: "x", country: "x", role: " r" })) {
      expect(v.message.startsWith(`${v.field} `), v.message).toBe(true);
    }
    expect(violationsOf(ListSessionsRequestSchema, { status: 0 })[0]?.message).toBe("status must be one of active, expired, revoked");
    expect(violationsOf(ListSessionsRequestSchema, { cursor: "" })[0]?.message).toBe("cursor must not be empty");
  });
});

describe("the identifier rules, in the proto and in the domain", () => {
  // The domain applies rules.proto's `identifier` to a token's claims (text-rules.ts): the two must agree.
  const identifiers: [string, boolean][] = [
    ["alice", true],
    ["Ümlaut-ok_123", true],
    ["inner space ok", true],
    ["😀".repeat(255), true],
    ["family 👨\u200D👩\u200D👧", true],
    ["coder 👩🏽\u200D💻", true],
    ["heart on fire ❤\uFE0F\u200D🔥", true],
    ["❤\uFE0F", true],
    ["admin\u200d", false],
    ["\u200dadmin", false],
    ["\u200d", false],
    ["ad\u200dmin", false],
    ["👨\u200D", false],
    ["\ufe0f", false],
    ["\ufe0fadmin", false],
    ["admin\u034f", false],
    ["\u3164", false],
    ["a\u115fb", false],
    ["\u2800", false],
    ["a\uffa0", false],
    [" a", false],
    ["a ", false],
    ["a\t", false],
    ["a\u00a0", false],
    ["a\u2003", false],
    ["\u3000a", false],
    ["a\u0000b", false],
    ["a\u007fb", false],
    ["a\u0085b", false],
    ["a\u000bb", false],
    ["a\u2028b", false],
    ["a\u2029b", false],
    ["a\u200fb", false],
    ["a\u061cb", false],
    ["a\u2067b", false],
    ["alice\u200b", false],
    ["al\u00adice", false],
    ["al\u2060ice", false],
    ["\ufeffalice", false],
    ["a\ufeff", false],
    ["x".repeat(255), true],
    ["x".repeat(256), false],
  ];
  it.each(identifiers)("%j: accepted %s by both", (value, isAccepted) => {
    expect(isIdentifier(value, 255)).toBe(isAccepted);
    const violations = violationsOf(CreateSessionRequestSchema, { userId: value });
    expect(violations.length === 0).toBe(isAccepted);
    for (const v of violations) expect(v.field).toBe("user_id");
  });

  it("the domain also refuses what the wire format does (a lone surrogate) and an empty claim", () => {
    expect(isIdentifier("a\udc00", 255)).toBe(false);
    expect(isIdentifier("", 255)).toBe(false);
  });

  it("cuts free text to its length in characters, never splitting a character", () => {
    expect(cutToCharacters("😀".repeat(1030), 1024)).toBe("😀".repeat(1024));
    expect(cutToCharacters("short", 1024)).toBe("short");
    expect(characterCount("😀é")).toBe(2);
  });
});
