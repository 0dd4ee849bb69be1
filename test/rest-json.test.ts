import { type DescMessage, create, equals, isFieldSet } from "@bufbuild/protobuf";
import { UninterpretedOptionSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  CreateSessionRequestSchema,
  DeviceType,
  GetSessionResponseSchema,
  ListSessionsRequestSchema,
  ListSessionsResponseSchema,
  PaginationSchema,
  EndReason,
  SessionSchema,
  SessionStatus,
  VerifyErrorCode,
  VerifyTokenResponseSchema,
} from "../gen/sessions/v1/sessions_pb.js";
import { AppError } from "../src/domain/errors.js";
import { fromRestJson, fromRestParams, toRestJson } from "../src/transport/rest-json.js";

const at = (iso: string) => timestampFromDate(new Date(iso));

const session = create(SessionSchema, {
  id: "ses_1",
  userId: "usr_1",
  tenantId: "tnt_1",
  status: SessionStatus.ACTIVE,
  ipAddress: "203.0.113.42",
  deviceType: DeviceType.DESKTOP,
  createdAt: at("2024-01-15T10:30:00Z"),
  lastActiveAt: { seconds: 1705314600n, nanos: 123_456_000 },
  expiresAt: at("2024-02-14T10:30:00.123Z"),
  role: "member",
  endedAt: at("2024-01-16T00:00:00Z"),
  endReason: EndReason.REFRESH_TOKEN_REUSE,
});

function thrown(fn: () => unknown): AppError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(AppError);
    return err as AppError;
  }
  throw new Error("expected an AppError");
}

describe("toRestJson", () => {
  it("writes every field under its proto name, or its rest_name, in declaration order", () => {
    const json = toRestJson(SessionSchema, session);
    // ended_at and end_reason keep the names REST has always had.
    expect(Object.keys(json)).toEqual(SessionSchema.fields.map((f) => ({ ended_at: "revoked_at", end_reason: "revoke_reason" })[f.name] ?? f.name));
    expect(json).toEqual({
      id: "ses_1",
      user_id: "usr_1",
      tenant_id: "tnt_1",
      status: "active",
      user_agent: "",
      ip_address: "203.0.113.42",
      country: "",
      device_type: "desktop",
      created_at: "2024-01-15T10:30:00Z",
      last_active_at: "2024-01-15T10:30:00.123456Z",
      expires_at: "2024-02-14T10:30:00.123Z",
      role: "member",
      org_id: null,
      mfa_verified: false,
      revoked_at: "2024-01-16T00:00:00Z",
      revoke_reason: "refresh_token_reuse",
      revoked_by: null,
    });
  });

  it.each([
    ["zero enums and unset messages and optionals are null", create(SessionSchema), {
      status: null, device_type: null, revoke_reason: null, created_at: null, org_id: null, mfa_verified: false, id: "",
    }],
    ["a set optional keeps its zero value", create(SessionSchema, { orgId: "" }), { org_id: "" }],
    ["expired", create(SessionSchema, { status: SessionStatus.EXPIRED }), { status: "expired" }],
    ["revoked_all", create(SessionSchema, { endReason: EndReason.REVOKED_ALL }), { revoke_reason: "revoked_all" }],
    ["expired by time", create(SessionSchema, { endReason: EndReason.EXPIRED, endedAt: at("2024-02-14T10:30:00Z") }), { revoke_reason: "expired", revoked_at: "2024-02-14T10:30:00Z" }],
  ])("%s", (_name, message, expected) => {
    expect(toRestJson(SessionSchema, message)).toMatchObject(expected);
  });

  it("keeps int32 as numbers and explicit-presence fields as null", () => {
    expect(toRestJson(PaginationSchema, create(PaginationSchema, { limit: 0 }))).toEqual({
      limit: 0,
      has_more: false,
      next_cursor: null,
    });
    expect(toRestJson(VerifyTokenResponseSchema, create(VerifyTokenResponseSchema, { valid: false, error: { code: VerifyErrorCode.INVALID_TOKEN } })))
      .toEqual({
        valid: false,
        session_id: null,
        user_id: null,
        tenant_id: null,
        role: null,
        org_id: null,
        mfa_verified: null,
        expires_at: null,
        error: { code: "invalid_token", message: "" },
      });
  });

  it("recurses into repeated and nested messages", () => {
    const json = toRestJson(ListSessionsResponseSchema, create(ListSessionsResponseSchema, {
      data: [session, create(SessionSchema, { id: "ses_2" })],
      pagination: { limit: 20, hasMore: true, nextCursor: "c" },
    }));
    expect(json.data).toMatchObject([{ id: "ses_1", status: "active" }, { id: "ses_2", status: null, org_id: null }]);
    expect(json.pagination).toEqual({ limit: 20, has_more: true, next_cursor: "c" });
    expect(toRestJson(ListSessionsResponseSchema, create(ListSessionsResponseSchema))).toEqual({ data: [], pagination: null });
  });

  it("writes 64-bit integers as strings, bytes as base64 (any message, here a proto2 one)", () => {
    const option = create(UninterpretedOptionSchema, {
      negativeIntValue: -5n,
      stringValue: new Uint8Array([1, 2, 3]),
      name: [{ namePart: "x", isExtension: false }],
    });
    expect(toRestJson(UninterpretedOptionSchema, option)).toEqual({
      name: [{ name_part: "x", is_extension: false }],
      identifier_value: null,
      positive_int_value: null,
      negative_int_value: "-5",
      double_value: null,
      string_value: "AQID",
      aggregate_value: null,
    });
  });
});

describe("fromRestJson", () => {
  it("reads snake_case and lowerCamel names, and short or full enum names in any case", () => {
    const expected = create(CreateSessionRequestSchema, { userId: "usr_1", deviceType: DeviceType.MOBILE, mfaVerified: true });
    for (const json of [
      { user_id: "usr_1", device_type: "mobile", mfa_verified: true },
      { userId: "usr_1", deviceType: "MOBILE", mfaVerified: true },
      { user_id: "usr_1", device_type: "DEVICE_TYPE_MOBILE", mfa_verified: true },
      { user_id: "usr_1", device_type: "Device_Type_Mobile", mfa_verified: true },
    ]) {
      expect(equals(CreateSessionRequestSchema, fromRestJson(CreateSessionRequestSchema, json), expected)).toBe(true);
    }
  });

  it("treats null as unset", () => {
    const req = fromRestJson(CreateSessionRequestSchema, { org_id: null, device_type: null, user_id: null });
    expect(isFieldSet(req, CreateSessionRequestSchema.field.orgId)).toBe(false);
    expect(req.deviceType).toBe(DeviceType.UNSPECIFIED);
  });

  it("keeps an explicit zero as set", () => {
    const req = fromRestJson(ListSessionsRequestSchema, { limit: 0 });
    expect(isFieldSet(req, ListSessionsRequestSchema.field.limit)).toBe(true);
    expect(req.limit).toBe(0);
  });

  it("reads timestamps in nested messages", () => {
    const res = fromRestJson(GetSessionResponseSchema, { session: { id: "ses_1", created_at: "2024-01-15T10:30:00.5Z", status: "revoked" } });
    expect(res.session?.createdAt).toEqual(expect.objectContaining({ seconds: 1705314600n, nanos: 500_000_000 }));
    expect(res.session?.status).toBe(SessionStatus.REVOKED);
  });

  it.each<[string, DescMessage, unknown]>([
    ["session", SessionSchema, session],
    ["empty session", SessionSchema, create(SessionSchema)],
    ["uninterpreted option", UninterpretedOptionSchema, create(UninterpretedOptionSchema, { positiveIntValue: 7n, doubleValue: 0.5, name: [{ namePart: "a", isExtension: true }] })],
  ])("round-trips %s", (_name, schema, message) => {
    const m = message as never;
    expect(equals(schema, fromRestJson(schema, toRestJson(schema, m)), m)).toBe(true);
  });

  it.each<[string, DescMessage, unknown, string | undefined]>([
    ["unknown field", CreateSessionRequestSchema, { user_id: "u", nope: 1 }, "nope"],
    ["string as number", CreateSessionRequestSchema, { user_id: 5 }, "user_id"],
    ["bool as string", CreateSessionRequestSchema, { mfa_verified: "yes" }, "mfa_verified"],
    ["fractional int32", ListSessionsRequestSchema, { limit: 1.5 }, "limit"],
    ["int32 out of range", ListSessionsRequestSchema, { limit: 3_000_000_000 }, "limit"],
    ["bad enum name", CreateSessionRequestSchema, { device_type: "laptop" }, "device_type"],
    ["enum as number", CreateSessionRequestSchema, { device_type: 1 }, "device_type"],
    ["other enum's name", ListSessionsRequestSchema, { status: "DEVICE_TYPE_MOBILE" }, "status"],
    ["same field twice", CreateSessionRequestSchema, { user_id: "a", userId: "b" }, "user_id"],
    ["nested bad enum", GetSessionResponseSchema, { session: { status: "bogus" } }, "session.status"],
    ["nested bad timestamp", GetSessionResponseSchema, { session: { created_at: "yesterday" } }, "session.created_at"],
    ["nested unknown field", GetSessionResponseSchema, { session: { nope: true } }, "session.nope"],
    ["nested non-object", GetSessionResponseSchema, { session: "ses_1" }, "session"],
    ["list item", ListSessionsResponseSchema, { data: [{}, { status: 7 }] }, "data[1].status"],
    ["list as object", ListSessionsResponseSchema, { data: {} }, "data"],
    ["array body", CreateSessionRequestSchema, [], undefined],
    ["string body", CreateSessionRequestSchema, "x", undefined],
  ])("rejects %s", (_name, schema, json, field) => {
    const err = thrown(() => fromRestJson(schema, json));
    expect(err.code).toBe("invalid_request");
    expect(err.field).toBe(field);
  });

  it("rejects fields bound elsewhere as unknown", () => {
    const err = thrown(() => fromRestJson(CreateSessionRequestSchema, { user_id: "u" }, { exclude: new Set(["user_id"]) }));
    expect([err.code, err.field]).toEqual(["invalid_request", "user_id"]);
  });
});

describe("fromRestParams", () => {
  it("converts strings to each field's type", () => {
    const req = fromRestParams(ListSessionsRequestSchema, { user_id: "usr_1", status: "Revoked", limit: "5", cursor: "" });
    expect(req).toMatchObject({ userId: "usr_1", status: SessionStatus.REVOKED, limit: 5, cursor: "" });
    const create = fromRestParams(CreateSessionRequestSchema, { mfa_verified: "true", deviceType: "bot" });
    expect(create).toMatchObject({ mfaVerified: true, deviceType: DeviceType.BOT });
  });

  it("keeps limit=0 as explicitly set (ranges are the domain's business)", () => {
    const req = fromRestParams(ListSessionsRequestSchema, { limit: "0" });
    expect(isFieldSet(req, ListSessionsRequestSchema.field.limit)).toBe(true);
  });

  it("merges into an existing message", () => {
    const into = create(ListSessionsRequestSchema, { userId: "usr_1" });
    expect(fromRestParams(ListSessionsRequestSchema, { limit: "3" }, { into })).toBe(into);
    expect(into).toMatchObject({ userId: "usr_1", limit: 3 });
  });

  it.each<[string, Record<string, string | string[]>, string]>([
    ["limit=abc", { limit: "abc" }, "limit"],
    ["limit=", { limit: "" }, "limit"],
    ["limit=1e10", { limit: "1e10" }, "limit"],
    ["a repeated singular", { limit: ["1", "2"] }, "limit"],
    ["an unknown parameter", { bogus: "1" }, "bogus"],
    ["a bad enum", { status: "sideways" }, "status"],
  ])("rejects %s", (_name, params, field) => {
    const err = thrown(() => fromRestParams(ListSessionsRequestSchema, params));
    expect([err.code, err.field]).toEqual(["invalid_request", field]);
  });

  it("rejects a bool that is not true or false, and excluded fields", () => {
    expect(thrown(() => fromRestParams(CreateSessionRequestSchema, { mfa_verified: "yes" })).field).toBe("mfa_verified");
    expect(thrown(() => fromRestParams(ListSessionsRequestSchema, { user_id: "u" }, { exclude: new Set(["user_id"]) })).field)
      .toBe("user_id");
  });
});
