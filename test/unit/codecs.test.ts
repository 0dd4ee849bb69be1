import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { DeviceType, EndReason, SessionStatus, VerifyErrorCode, VerifyErrorCodeSchema } from "../../gen/sessions/v1/sessions_pb.js";
import { decodeCursor, encodeCursor } from "../../src/domain/cursor.js";
import { AppError, errorCodes } from "../../src/domain/errors.js";
import type { Session } from "../../src/domain/model.js";
import { legacyRefreshTokenPattern as refreshTokenPattern, successorOf } from "../../src/domain/refresh-tokens.js";
import { fromProtoDeviceType, fromProtoStatus, toProtoSession, verifyErrorCodeToProto } from "../../src/transport/converters.js";
import { errorTable, toConnectError, toPublicError } from "../../src/transport/error-codes.js";
import { parseQueryString } from "../../src/transport/rest.js";
import { enumShortName } from "../../src/transport/rest-json.js";
import { developmentKeyEncryptionKey, loadConfig } from "../../src/config.js";
import { translateDriverError } from "../../src/store/db.js";

/** Converters, codecs and the error table: pure functions, checked in milliseconds. */

const key = randomBytes(32);

describe("cursor", () => {
  const after = { createdAt: new Date("2026-01-15T10:30:00Z"), id: "ses_01HABCDEF999888ABCDEFGHJKM" };
  const binding = ["tnt_1", "=usr_1", "active"];

  it("round-trips and is bound to the tenant and filters", () => {
    const cursor = encodeCursor(key, binding, after);
    expect(cursor).toMatch(/^cur_[\w-]+\.[\w-]+$/);
    expect(decodeCursor(key, binding, cursor)).toEqual(after);
    for (const other of [["tnt_2", "=usr_1", "active"], ["tnt_1", "*", "active"], ["tnt_1", "=usr_1", "revoked"]]) {
      expect(() => decodeCursor(key, other, cursor)).toThrow(AppError);
    }
    expect(() => decodeCursor(randomBytes(32), binding, cursor)).toThrow(AppError);
  });

  it.each(["", "cur_", "cur_abc", "cur_a.b.c", "xyz_abc.def", `cur_${"a".repeat(300)}.b`])("refuses %j as invalid_cursor", (cursor) => {
    expect(() => decodeCursor(key, binding, cursor)).toThrow(expect.objectContaining({ code: "invalid_cursor", field: "cursor" }));
  });

  it("refuses any single changed character", () => {
    const cursor = encodeCursor(key, binding, after);
    for (let i = 4; i < cursor.length; i++) {
      const flipped = cursor.slice(0, i) + (cursor[i] === "A" ? "B" : "A") + cursor.slice(i + 1);
      expect(() => decodeCursor(key, binding, flipped)).toThrow(AppError);
    }
  });
});

describe("refresh-token successors", () => {
  it("are deterministic for one key and presented token, differ across keys and tokens, and have the token shape", () => {
    const token = `rt_${randomBytes(32).toString("base64url")}`;
    const next = successorOf(key, token);
    expect(next).toMatch(refreshTokenPattern);
    expect(successorOf(key, token)).toBe(next);
    expect(successorOf(randomBytes(32), token)).not.toBe(next);
    const changed = `${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}`;
    expect(successorOf(key, changed)).not.toBe(next);
    expect(successorOf(key, next)).not.toBe(next);
  });
});

describe("query strings", () => {
  it.each<[string, Record<string, string | string[]> | "invalid"]>([
    ["", {}],
    ["user_id=alice", { user_id: "alice" }],
    ["user_id=al%20ice&limit=5", { user_id: "al ice", limit: "5" }],
    ["user_id=a+b", "invalid"],
    ["user_id=a%2Bb%20c", { user_id: "a+b c" }],
    ["user_id=", { user_id: "" }],
    ["user_id", { user_id: "" }],
    ["a=1&a=2&a=3", { a: ["1", "2", "3"] }],
    ["q=%F0%9F%98%80", { q: "😀" }],
    ["__proto__=x", { ["__proto__"]: "x" }],
    ["q=%FF", "invalid"],
    ["q=%E0%A4", "invalid"],
    ["q=%zz", "invalid"],
    ["q=%", "invalid"],
    ["q=\u00e9", "invalid"],
    ["q=a b", "invalid"],
  ])("%j", (query, expected) => {
    const parsed = parseQueryString(query);
    const isInvalid = Object.getOwnPropertySymbols(parsed).length > 0;
    if (expected === "invalid") expect(isInvalid).toBe(true);
    else {
      expect(isInvalid).toBe(false);
      expect({ ...parsed }).toEqual({ ...expected });
    }
  });
});

describe("converters", () => {
  const session: Session = {
    tenantId: "tnt_1",
    id: "ses_1",
    userId: "usr_1",
    userAgent: "ua",
    ipAddress: "203.0.113.42",
    country: "US",
    deviceType: "tablet",
    role: "member",
    orgId: null,
    isMfaVerified: true,
    createdAt: new Date("2026-01-01T00:00:00Z"),
    lastActiveAt: new Date("2026-01-02T00:00:00Z"),
    expiresAt: new Date("2026-02-01T00:00:00Z"),
    idleExpiresAt: null,
    recordedEnd: null,
  };

  it("an active session has no end", () => {
    const proto = toProtoSession(session, new Date("2026-01-15T00:00:00Z"));
    expect(proto).toMatchObject({ status: SessionStatus.ACTIVE, deviceType: DeviceType.TABLET, endReason: EndReason.UNSPECIFIED, mfaVerified: true });
    expect(proto.endedAt).toBeUndefined();
    expect(proto.orgId).toBeUndefined();
  });

  it("an expired session ends at its expiry; a revoked one at its revoke, with who did it", () => {
    expect(toProtoSession(session, new Date("2026-03-01T00:00:00Z"))).toMatchObject({ status: SessionStatus.EXPIRED, endReason: EndReason.EXPIRED, endedAt: { seconds: BigInt(Date.parse("2026-02-01T00:00:00Z") / 1000) } });
    const revoked = { ...session, recordedEnd: { at: new Date("2026-01-05T00:00:00Z"), reason: "revoked_all" as const, by: "key_1" } };
    expect(toProtoSession(revoked, new Date("2026-01-15T00:00:00Z"))).toMatchObject({ status: SessionStatus.REVOKED, endReason: EndReason.REVOKED_ALL, revokedBy: "key_1" });
  });

  it("unspecified and unknown enum numbers read as undefined (the domain's default applies)", () => {
    expect(fromProtoStatus(SessionStatus.UNSPECIFIED)).toBeUndefined();
    expect(fromProtoStatus(99 as SessionStatus)).toBeUndefined();
    expect(fromProtoStatus(SessionStatus.REVOKED)).toBe("revoked");
    expect(fromProtoDeviceType(DeviceType.BOT)).toBe("bot");
    expect(fromProtoDeviceType(DeviceType.UNSPECIFIED)).toBeUndefined();
  });

  it("maps every verify failure to the VerifyErrorCode value whose REST name is the domain's code, and back to every value", () => {
    for (const [code, proto] of Object.entries(verifyErrorCodeToProto)) {
      expect(enumShortName(VerifyErrorCodeSchema, VerifyErrorCodeSchema.value[proto]!.name)).toBe(code);
    }
    const used = new Set(Object.values(verifyErrorCodeToProto));
    expect(VerifyErrorCodeSchema.values.filter((v) => v.number !== VerifyErrorCode.UNSPECIFIED && !used.has(v.number))).toEqual([]);
  });
});

describe("error mapping", () => {
  it("gives every code a Connect code and an HTTP status", () => {
    for (const code of errorCodes) expect(errorTable[code].status).toBeGreaterThanOrEqual(400);
  });

  it("keeps an AppError's code, message and field on REST and RPC", () => {
    const err = new AppError("invalid_request", "user_id must not be empty", "user_id");
    expect(toPublicError(err)).toEqual({ code: "invalid_request", message: "user_id must not be empty", status: 400, field: "user_id" });
    const connect = toConnectError(err);
    expect(connect.code).toBe(Code.InvalidArgument);
    expect(connect.findDetails(ErrorInfoSchema)[0]).toMatchObject({ reason: "invalid_request", domain: "sessions.v1", metadata: { field: "user_id" } });
    expect(connect.findDetails(BadRequestSchema)[0]?.fieldViolations).toMatchObject([{ field: "user_id", description: "user_id must not be empty" }]);
    // And back: a ConnectError carrying our reason maps to the same public error.
    expect(toPublicError(connect)).toEqual({ code: "invalid_request", message: "user_id must not be empty", status: 400, field: "user_id" });
  });

  it("hides anything unknown behind a generic internal error, keeping the cause for the log", () => {
    const cause = new Error("SELECT secret FROM sessions");
    expect(toPublicError(cause)).toEqual({ code: "internal", message: "internal error", status: 500, cause });
    expect(toConnectError(cause).message).toBe("[internal] internal error");
    const framework = new ConnectError("boom inside", Code.Internal);
    expect(toPublicError(framework)).toMatchObject({ code: "internal", message: "internal error" });
  });

  it.each<[Code, string]>([
    [Code.InvalidArgument, "invalid_request"],
    [Code.Unauthenticated, "invalid_api_key"],
    [Code.NotFound, "not_found"],
    [Code.Unavailable, "unavailable"],
  ])("maps a framework ConnectError %s to %s", (code, ours) => {
    expect(toPublicError(new ConnectError("x", code)).code).toBe(ours);
  });
});

describe("config", () => {
  const env = (over: Record<string, string>) => loadConfig({ NODE_ENV: "test", ...over });

  it.each<[string, unknown]>([
    ["", false],
    ["false", false],
    ["2", 2],
    ["10.0.0.0/8, 192.168.1.1 ,::1", ["10.0.0.0/8", "192.168.1.1", "::1"]],
    ["loopback,uniquelocal", ["loopback", "uniquelocal"]],
    ["fd00::/8", ["fd00::/8"]],
  ])("TRUST_PROXY=%j", (value, expected) => {
    expect(env({ TRUST_PROXY: value }).trustProxy).toEqual(expected);
  });

  it.each(["yes", "10.0.0.0/33", "example.com", "1.2.3.4/8/9", "::1/129"])("refuses TRUST_PROXY=%j naming the variable", (value) => {
    expect(() => env({ TRUST_PROXY: value })).toThrow(/TRUST_PROXY/);
  });

  it("gives new sessions numbered refresh tokens unless REFRESH_TOKENS=legacy; refuses anything else", () => {
    expect(env({}).refreshTokens).toBe("numbered");
    expect(env({ REFRESH_TOKENS: "legacy" }).refreshTokens).toBe("legacy");
    expect(() => env({ REFRESH_TOKENS: "opaque" })).toThrow(/REFRESH_TOKENS: must be one of numbered, legacy/);
  });

  it("names every bad variable at once, with what it must be", () => {
    const err = (() => {
      try {
        env({ PORT: "80a", DATABASE_URL: "postgres://x/y", LOG_LEVEL: "loud", KEY_ENCRYPTION_KEY: "c2hvcnQ", MAX_CONNECTIONS: "0" });
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err?.message).toContain("PORT: must be an integer from 0 to 65535");
    expect(err?.message).toContain("DATABASE_URL: must be a mysql:// or mariadb:// URL");
    expect(err?.message).toContain("LOG_LEVEL: must be one of");
    expect(err?.message).toContain("KEY_ENCRYPTION_KEY: must be 32 bytes");
    expect(err?.message).toContain("MAX_CONNECTIONS: must be an integer from 1 to");
  });

  it("uses the defaults for unset variables, and refuses to run production without its own key", () => {
    expect(env({ SWEEP_INTERVAL_SECONDS: "0" })).toMatchObject({ port: 8080, sweepIntervalMs: 0, databaseUrl: "mysql://root@127.0.0.1:3306/sessions" });
    expect(() => loadConfig({ NODE_ENV: "production" })).toThrow(/KEY_ENCRYPTION_KEY: is required in production/);
    expect(() => loadConfig({ NODE_ENV: "production", KEY_ENCRYPTION_KEY: developmentKeyEncryptionKey })).toThrow(/must not be the development key/);
    const kek = Buffer.alloc(32, 7);
    expect(loadConfig({ NODE_ENV: "production", KEY_ENCRYPTION_KEY: kek.toString("base64url") }).keyEncryptionKey).toEqual(kek);
  });

  it("reads CORS_ORIGINS as exact origins, none by default, and names a bad one", () => {
    expect(env({}).corsOrigins).toEqual([]);
    expect(env({ CORS_ORIGINS: "https://app.example.com, http://localhost:3000" }).corsOrigins).toEqual(["https://app.example.com", "http://localhost:3000"]);
    for (const bad of ["*", "https://app.example.com/", "app.example.com", "ftp://x.example", "https://a.example/path"]) {
      expect(() => env({ CORS_ORIGINS: bad }), bad).toThrow(/CORS_ORIGINS: .* is not an origin/);
    }
  });

  it("defaults ISSUER to the address the service listens on, as a client on the machine reaches it", () => {
    expect(env({}).issuer).toBe("http://localhost:8080");
    expect(env({ PORT: "9090" }).issuer).toBe("http://localhost:9090");
    expect(env({ PORT: "9090", ISSUER: "https://auth.example.com" }).issuer).toBe("https://auth.example.com");
    expect(env({ PORT: "9090", HOST: "127.0.0.2" }).issuer).toBe("http://127.0.0.2:9090");
    expect(env({ PORT: "9090", HOST: "::1" }).issuer).toBe("http://[::1]:9090");
    expect(env({ PORT: "9090", HOST: "::" }).issuer).toBe("http://localhost:9090");
    // PORT=0 picks the port only when listening: ISSUER must be given; a bad PORT is reported once, alone.
    expect(() => env({ PORT: "0" })).toThrow(/ISSUER: is required with PORT=0/);
    expect(env({ PORT: "0", ISSUER: "https://auth.example.com" }).issuer).toBe("https://auth.example.com");
    expect(() => env({ PORT: "70000" })).toThrow(/^invalid configuration:\n  PORT: must be an integer from 0 to 65535$/);
  });

  it("refuses a variable set but empty, naming it, where empty is not documented to mean off", () => {
    for (const name of ["PORT", "DATABASE_URL", "ISSUER", "LOG_LEVEL", "HOST", "KEY_ENCRYPTION_KEY", "RATE_LIMIT_IP_PER_MINUTE"]) {
      for (const empty of ["", "  "]) expect(() => env({ [name]: empty }), `${name}=${JSON.stringify(empty)}`).toThrow(new RegExp(`${name}: is set but empty`));
    }
    // Empty means off for these, as documented.
    expect(env({ REDIS_URL: "", CORS_ORIGINS: "", TRUST_PROXY: "" })).toMatchObject({ redisUrl: undefined, corsOrigins: [], trustProxy: false });
  });

  it("refuses a DATABASE_URL that names no database, with the other configuration problems", () => {
    for (const url of ["mysql://root@127.0.0.1:3306/", "mysql://root@127.0.0.1:3306", "mysql://root@127.0.0.1/a-b", "mysql://root@127.0.0.1/a/b", "mysql://root@127.0.0.1/%ZZ"]) {
      expect(() => env({ DATABASE_URL: url }), url).toThrow(/^invalid configuration:\n  DATABASE_URL: must name a database/);
    }
    expect(env({ DATABASE_URL: "mysql://u:p@db.internal:3307/sessions_2$" }).databaseUrl).toBe("mysql://u:p@db.internal:3307/sessions_2$");
    // Reported once: a URL that is not mysql:// is that problem alone.
    expect(() => env({ DATABASE_URL: "postgres://x/" })).toThrow(/^invalid configuration:\n  DATABASE_URL: must be a mysql:\/\/ or mariadb:\/\/ URL, such as [^\n]*$/);
  });

  it("takes mariadb:// as mysql://, and says how to write a password that breaks the URL", () => {
    expect(env({ DATABASE_URL: "mariadb://u:p@db.internal:3307/sessions" }).databaseUrl).toBe("mariadb://u:p@db.internal:3307/sessions");
    // An unencoded / or # ends the authority early: the URL does not parse, and the message says why it may not.
    for (const url of ["mysql://root:pa/ss@127.0.0.1/sessions", "mysql://root:pa#ss@127.0.0.1/sessions", "mysql://root:pa?ss@127.0.0.1/sessions"]) {
      expect(() => env({ DATABASE_URL: url }), url).toThrow(/DATABASE_URL: must be a mysql:\/\/ or mariadb:\/\/ URL, .*percent-encoded/);
    }
    // An unencoded @ or : in a password is read as meant.
    expect(env({ DATABASE_URL: "mysql://root:p@ss:w@127.0.0.1/sessions" }).databaseUrl).toBe("mysql://root:p@ss:w@127.0.0.1/sessions");
    // Options the service would not read are refused, not ignored: ?ssl=true must not mean plain text.
    for (const url of ["mysql://root@127.0.0.1/sessions?ssl=true", "mysql://root@127.0.0.1/sessions?", "mysql://root@127.0.0.1/sessions#x"]) {
      expect(() => env({ DATABASE_URL: url }), url).toThrow(/^invalid configuration:\n  DATABASE_URL: takes no query parameters or fragment/);
    }
    // A % that starts no escape cannot be decoded: a problem at start, not a crash at connect.
    expect(() => env({ DATABASE_URL: "mysql://root:100%@127.0.0.1/sessions" })).toThrow(/^invalid configuration:\n  DATABASE_URL: has a % in its user name or password that is not followed by two hex digits \(write % as %25\)$/);
  });

  it("turns per-tenant limits off by default and keeps the per-IP refresh limit on", () => {
    expect(env({}).rateLimits).toEqual({ readPerMinute: 0, writePerMinute: 0, refreshPerMinute: 0, ipPerMinute: 6_000, authFailuresPerMinute: 100 });
  });
});

describe("database errors", () => {
  it.each([
    [1205, "a row lock wait that timed out"],
    [1213, "a deadlock (or a Galera certification conflict)"],
    [1467, "an AUTO-INC lock wait that timed out (MariaDB: ER_AUTOINC_READ_FAILED), which was a 500"],
  ])("errno %i, %s, is unavailable (503), never internal", (errno) => {
    const err = Object.assign(new Error("from the server"), { errno, code: "ER_X" });
    const translated = translateDriverError(err);
    expect(translated).toBeInstanceOf(AppError);
    expect((translated as AppError).code).toBe("unavailable");
  });
});
