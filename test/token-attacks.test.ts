import { createHmac, createPublicKey, generateKeyPairSync, constants as cryptoConstants, sign, type KeyObject } from "node:crypto";
import { createServer, type Server } from "node:net";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SessionService, VerifyErrorCode } from "../gen/sessions/v1/sessions_pb.js";
import { newId } from "../src/domain/secrets.js";
import { maxAccessTokenLength } from "../src/domain/session-service.js";
import { clockToleranceSeconds, decryptPrivateKey, maxAccessTokenTtlSeconds, newSigningKey } from "../src/domain/signing-keys.js";
import { createSigningKeyStore } from "../src/store/signing-key-store.js";
import { manualClock } from "./helpers/clock.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * The JWT attack suite (hardening issue): every case is verified over REST (POST /v1/sessions/verify)
 * AND over Connect, and both must give the same answer. A rejected token is HTTP 200 with
 * `{valid: false, error: {code}}`; the code is `invalid_token` unless the case is an expiry.
 *
 * To forge tokens "signed by us" with arbitrary headers and claims, the test adds a second signing
 * key through the domain (published now, signing only in ten years) and keeps its private half: the
 * server treats anything it signs as signed by a published key.
 */

const clock = manualClock();
let server: TestServer;
let rpc: Client<typeof SessionService>;
let headers: Record<string, string>;

/** The genuine token from CreateSession and its published key. */
let genuine: { token: string; sessionId: string; userId: string; kid: string; x: string; jwksText: string };
/** The key under test control. */
let ours: { kid: string; privateKey: KeyObject };

/** A local server standing in for an attacker's jku/x5u host: it must never be contacted. */
let lure: Server;
let lureConnections = 0;
let lureUrl: string;

const b64u = (data: string | Uint8Array) => Buffer.from(data).toString("base64url");
const nowSeconds = () => Math.floor(clock.now().getTime() / 1000);

beforeAll(async () => {
  server = await startTestServer({ clock });
  headers = server.tenant.headers;
  rpc = createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));

  const res = await fetch(`${server.url}/v1/sessions`, {
    method: "POST",
    headers: { ...headers, "content-type": "application/json" },
    body: JSON.stringify({ user_id: "usr_attack_target" }),
  });
  expect(res.status).toBe(201);
  const created = (await res.json()) as { access_token: string; session: { id: string; user_id: string } };
  const jwksText = await (await fetch(`${server.url}/.well-known/jwks.json`)).text();
  const jwk = (JSON.parse(jwksText) as { keys: { kid: string; x: string }[] }).keys[0]!;
  genuine = { token: created.access_token, sessionId: created.session.id, userId: created.session.user_id, kid: jwk.kid, x: jwk.x, jwksText };

  const kek = server.config.keyEncryptionKey;
  const tenYears = new Date(clock.now().getTime() + 10 * 365 * 24 * 3600 * 1000);
  const record = newSigningKey(kek, clock.now(), tenYears);
  await createSigningKeyStore(server.services.pool).insertSigningKey(record);
  await server.services.keyRing.reload();
  ours = { kid: record.id, privateKey: decryptPrivateKey(kek, record.id, record.privateKeyEncrypted) };

  lure = createServer((socket) => {
    lureConnections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => lure.listen(0, "127.0.0.1", resolve));
  const address = lure.address();
  lureUrl = `http://127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`;
});

afterAll(async () => {
  await new Promise((resolve) => lure?.close(resolve));
  await server?.close();
});

type Outcome = { valid: boolean; code: string | null };

/** Verifies over REST and over Connect, asserts they agree, and returns the common outcome. */
async function verifyBoth(token: string, tenantHeaders = headers): Promise<Outcome> {
  const res = await fetch(`${server.url}/v1/sessions/verify`, {
    method: "POST",
    headers: { ...tenantHeaders, "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { valid: boolean; error: { code: string } | null };
  const rest: Outcome = { valid: body.valid, code: body.error?.code ?? null };
  const answer = await rpc.verifyToken({ token }, { headers: tenantHeaders });
  // The RPC's code is the VerifyErrorCode enum, whose REST JSON form is the lower-case name.
  const viaRpc: Outcome = { valid: answer.valid, code: answer.error ? VerifyErrorCode[answer.error.code].toLowerCase() : null };
  expect(viaRpc, "REST and RPC disagree").toEqual(rest);
  return rest;
}

async function expectRejected(token: string, code = "invalid_token", tenantHeaders = headers) {
  expect(await verifyBoth(token, tenantHeaders)).toEqual({ valid: false, code });
}

async function expectAccepted(token: string) {
  expect(await verifyBoth(token)).toEqual({ valid: true, code: null });
}

// ---- forging -------------------------------------------------------------------------------------

type Json = Record<string, unknown>;
type Signer = (signingInput: Buffer) => Buffer;

const signWithOurs: Signer = (input) => sign(null, input, ours.privateKey);

function headerOf(over: Json = {}, drop: string[] = []): Json {
  const h: Json = { alg: "EdDSA", kid: ours.kid, typ: "at+jwt", ...over };
  for (const k of drop) delete h[k];
  return h;
}

function claimsOf(over: Json = {}, drop: string[] = []): Json {
  const iat = nowSeconds();
  const c: Json = {
    sub: genuine.userId,
    aud: server.tenant.id,
    jti: newId("at"),
    sid: genuine.sessionId,
    tenant_id: server.tenant.id,
    role: "member",
    mfa_verified: false,
    iss: server.config.issuer,
    iat,
    nbf: iat,
    exp: iat + 900,
    ...over,
  };
  for (const k of drop) delete c[k];
  return c;
}

/** A compact token from a header and payload (objects are JSON-encoded, strings/bytes taken as is). */
function forge(header: Json | string | Buffer, payload: Json | string | Buffer, signer: Signer = signWithOurs): string {
  const seg = (part: Json | string | Buffer) => b64u(typeof part === "string" || Buffer.isBuffer(part) ? part : JSON.stringify(part));
  const input = `${seg(header)}.${seg(payload)}`;
  return `${input}.${b64u(signer(Buffer.from(input)))}`;
}

/** Signs an already-encoded signing input (for non-canonical segments "correctly signed"). */
function signRaw(signingInput: string, signer: Signer = signWithOurs): string {
  return `${signingInput}.${b64u(signer(Buffer.from(signingInput)))}`;
}

const hmac = (alg: string, secret: string | Buffer): Signer => (input) => createHmac(`sha${alg.slice(2)}`, secret).update(input).digest();

const attacker = generateKeyPairSync("ed25519");
const signWithAttacker: Signer = (input) => sign(null, input, attacker.privateKey);

const segments = (token: string) => token.split(".") as [string, string, string];

// ---- the suite -------------------------------------------------------------------------------------

describe("controls", () => {
  it("the genuine token is valid over REST and RPC", async () => {
    await expectAccepted(genuine.token);
  });

  it("a token forged with the test-controlled key and honest claims is valid: the forging works", async () => {
    await expectAccepted(forge(headerOf(), claimsOf()));
  });
});

describe("alg: none", () => {
  const variants = ["none", "None", "NONE", "nOnE"];
  it.each(variants)("alg %s without a signature, with a signature, and with no third segment", async (alg) => {
    const h = b64u(JSON.stringify(headerOf({ alg })));
    const p = b64u(JSON.stringify(claimsOf()));
    await expectRejected(`${h}.${p}.`);
    await expectRejected(`${h}.${p}`);
    await expectRejected(`${h}.${p}.${segments(genuine.token)[2]}`);
    await expectRejected(forge(headerOf({ alg }), claimsOf()));
    await expectRejected(`${b64u(JSON.stringify({ alg, typ: "at+jwt" }))}.${p}.`);
  });
});

describe("HS256/384/512 keyed with our public key (key confusion)", () => {
  const encodings: Record<string, () => string | Buffer> = {
    "raw 32 bytes": () => Buffer.from(genuine.x, "base64url"),
    "base64url x string": () => genuine.x,
    "padded standard base64 x": () => Buffer.from(genuine.x, "base64url").toString("base64"),
    "hex": () => Buffer.from(genuine.x, "base64url").toString("hex"),
    "PEM SPKI": () => publicKeyObject().export({ format: "pem", type: "spki" }) as string,
    "PEM SPKI without trailing newline": () => (publicKeyObject().export({ format: "pem", type: "spki" }) as string).trimEnd(),
    "DER SPKI": () => publicKeyObject().export({ format: "der", type: "spki" }),
    "JWK JSON": () => JSON.stringify({ kty: "OKP", crv: "Ed25519", x: genuine.x }),
    "JWKS document": () => genuine.jwksText,
  };
  function publicKeyObject() {
    return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: genuine.x }, format: "jwk" });
  }
  for (const alg of ["HS256", "HS384", "HS512"]) {
    it.each(Object.keys(encodings))(`${alg} with the key as %s`, async (name) => {
      const secret = encodings[name]!();
      await expectRejected(forge(headerOf({ alg, kid: genuine.kid }), claimsOf(), hmac(alg, secret)));
    });
  }
});

describe("other algorithms under our kid", () => {
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const ed448 = generateKeyPairSync("ed448");
  const otherEd25519 = generateKeyPairSync("ed25519");
  const cases: [string, string, Signer][] = [
    ["RS256", "RS256", (i) => sign("sha256", i, rsa.privateKey)],
    ["PS256", "PS256", (i) => sign("sha256", i, { key: rsa.privateKey, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32 })],
    ["ES256", "ES256", (i) => sign("sha256", i, { key: ec.privateKey, dsaEncoding: "ieee-p1363" })],
    ["HS256 with a random secret", "HS256", hmac("HS256", "a-random-secret")],
    ["HS512 with a random secret", "HS512", hmac("HS512", "a-random-secret")],
    ["Ed448 named Ed448", "Ed448", (i) => sign(null, i, ed448.privateKey)],
    ["Ed448 signature under alg EdDSA", "EdDSA", (i) => sign(null, i, ed448.privateKey)],
    ["EdDSA with a wrong Ed25519 key", "EdDSA", (i) => sign(null, i, otherEd25519.privateKey)],
    // jose 6 also knows the fully specified name; we accept only "EdDSA", even correctly signed.
    ["alg Ed25519, correctly signed by our key", "Ed25519", signWithOurs],
    ["alg eddsa (case), correctly signed by our key", "eddsa", signWithOurs],
  ];
  it.each(cases)("%s", async (_name, alg, signer) => {
    await expectRejected(forge(headerOf({ alg, kid: genuine.kid }), claimsOf(), signer));
    await expectRejected(forge(headerOf({ alg }), claimsOf(), signer));
  });
});

describe("kid", () => {
  const kids: [string, unknown][] = [
    ["unknown but well-formed", newId("key")],
    ["path traversal", "../../etc/passwd"],
    ["SQL-ish", "' OR 1=1 --"],
    ["very long", `key_${"A".repeat(2000)}`],
    ["empty", ""],
    ["a number", 1],
    ["null", null],
    ["an object", { kid: "x" }],
    ["our kid with a NUL appended", "\u0000"],
  ];
  it.each(kids)("%s is rejected (correctly signed by our key)", async (_name, kid) => {
    const resolved = kid === "\u0000" ? `${ours.kid}\u0000` : kid;
    await expectRejected(forge(headerOf({ kid: resolved }), claimsOf()));
  });

  it("absent kid is rejected", async () => {
    await expectRejected(forge(headerOf({}, ["kid"]), claimsOf()));
  });

  it("another published key's kid with our key's signature is rejected", async () => {
    await expectRejected(forge(headerOf({ kid: genuine.kid }), claimsOf()));
  });
});

describe("key-carrying and extension headers", () => {
  const attackerJwk = attacker.publicKey.export({ format: "jwk" });
  const attackerDer = attacker.publicKey.export({ format: "der", type: "spki" }).toString("base64");
  const extras: [string, () => Json][] = [
    ["embedded jwk (attacker key)", () => ({ jwk: attackerJwk })],
    ["jku pointing at a local host", () => ({ jku: `${lureUrl}/jwks.json` })],
    ["x5u pointing at a local host", () => ({ x5u: `${lureUrl}/cert.pem` })],
    ["x5c with a DER blob", () => ({ x5c: [attackerDer] })],
    ["x5t", () => ({ x5t: b64u(Buffer.alloc(20)) })],
    ["crit with an unknown extension", () => ({ crit: ["exp"], exp: 1 })],
    ["crit b64 with b64 true", () => ({ crit: ["b64"], b64: true })],
    ["b64 false without crit", () => ({ b64: false })],
    ["cty", () => ({ cty: "JWT" })],
    ["zip", () => ({ zip: "DEF" })],
    ["enc (looks like a JWE)", () => ({ enc: "A256GCM" })],
  ];
  it.each(extras)("%s: rejected, whether signed by the attacker or by our key", async (_name, extra) => {
    await expectRejected(forge(headerOf(extra()), claimsOf(), signWithAttacker));
    await expectRejected(forge(headerOf({ ...extra(), kid: genuine.kid }), claimsOf(), signWithAttacker));
    await expectRejected(forge(headerOf(extra()), claimsOf()));
  });

  it("the jku/x5u host was never contacted", async () => {
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(lureConnections).toBe(0);
  });

  it("b64: false with crit and an unencoded payload, signed by our key", async () => {
    const h = b64u(JSON.stringify(headerOf({ b64: false, crit: ["b64"] })));
    const raw = JSON.stringify(claimsOf());
    await expectRejected(signRaw(`${h}.${raw}`));
    // The same with a payload that happens to be base64url-safe text.
    await expectRejected(signRaw(`${h}.payload`));
  });

  it("header not in the exact form we sign: reordered, spaced, escaped, duplicated keys", async () => {
    const kid = ours.kid;
    for (const text of [
      `{"kid":"${kid}","alg":"EdDSA","typ":"at+jwt"}`,
      `{"alg": "EdDSA", "kid": "${kid}", "typ": "at+jwt"}`,
      `{"alg":"\\u0045dDSA","kid":"${kid}","typ":"at+jwt"}`,
      `{"alg":"none","alg":"EdDSA","kid":"${kid}","typ":"at+jwt"}`,
      `{"alg":"EdDSA","kid":"${kid}","typ":"at+jwt","alg":"none"}`,
      ` {"alg":"EdDSA","kid":"${kid}","typ":"at+jwt"}`,
      `{"alg":"EdDSA","kid":"${kid}","typ":"at+jwt"}\n`,
    ]) {
      await expectRejected(forge(text, claimsOf()));
    }
    // The exact form is accepted (control).
    await expectAccepted(forge(`{"alg":"EdDSA","kid":"${kid}","typ":"at+jwt"}`, claimsOf()));
  });
});

describe("signature tampering", () => {
  it("a flipped bit anywhere in the signature", async () => {
    const [h, p, s] = segments(genuine.token);
    const sig = Buffer.from(s, "base64url");
    for (const bit of [0, 7, 100, 255, 256, 300, 511]) {
      const flipped = Buffer.from(sig);
      flipped[bit >> 3]! ^= 1 << (bit & 7);
      await expectRejected(`${h}.${p}.${b64u(flipped)}`);
    }
  });

  it("a truncated or extended signature", async () => {
    const [h, p, s] = segments(genuine.token);
    const sig = Buffer.from(s, "base64url");
    await expectRejected(`${h}.${p}.${s.slice(0, -1)}`);
    await expectRejected(`${h}.${p}.${s.slice(0, -4)}`);
    await expectRejected(`${h}.${p}.${b64u(sig.subarray(0, 32))}`);
    await expectRejected(`${h}.${p}.${b64u(sig.subarray(0, 63))}`);
    await expectRejected(`${h}.${p}.${b64u(Buffer.concat([sig, Buffer.alloc(1)]))}`);
    await expectRejected(`${h}.${p}.${b64u(Buffer.alloc(64))}`);
  });

  it("the signature of another token (the payload swapped)", async () => {
    const [h, , s] = segments(genuine.token);
    await expectRejected(`${h}.${b64u(JSON.stringify(claimsOf({ role: "admin" })))}.${s}`);
  });
});

describe("non-canonical base64url (all decode to the genuine bytes)", () => {
  /** The 15 other characters whose 6 bits differ from `c` only in the 4 unused low bits. */
  function siblings(c: string): string[] {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const i = alphabet.indexOf(c);
    return Array.from({ length: 16 }, (_, k) => alphabet[(i & ~0x0f) | k]!).filter((x) => x !== c);
  }

  it("the sibling last character of the signature (same bytes, different text)", async () => {
    const [h, p, s] = segments(genuine.token);
    expect(s.length % 4).toBe(2);
    for (const sibling of siblings(s.at(-1)!)) {
      const variant = `${h}.${p}.${s.slice(0, -1)}${sibling}`;
      expect(Buffer.from(variant.split(".")[2]!, "base64url").equals(Buffer.from(s, "base64url"))).toBe(true);
      await expectRejected(variant);
    }
  });

  it("trailing = padding on any segment", async () => {
    const parts = segments(genuine.token);
    for (let i = 0; i < 3; i++) {
      const pad = "=".repeat((4 - (parts[i]!.length % 4)) % 4 || 1);
      for (const padding of [pad, "=", "=="]) {
        const variant = parts.map((seg, j) => (j === i ? seg + padding : seg)).join(".");
        await expectRejected(variant);
      }
    }
  });

  it("whitespace or a newline inserted anywhere", async () => {
    const t = genuine.token;
    const [h, p, s] = segments(t);
    for (const ws of [" ", "\n", "\r\n", "\t"]) {
      await expectRejected(`${h}.${p}.${s.slice(0, 40)}${ws}${s.slice(40)}`);
      await expectRejected(`${h}.${p}${ws}.${s}`);
      await expectRejected(`${h.slice(0, 10)}${ws}${h.slice(10)}.${p}.${s}`);
      await expectRejected(`${t}${ws}`);
      await expectRejected(`${ws}${t}`);
    }
  });

  it("standard-alphabet + and / in place of - and _", async () => {
    // Find tokens (signed by our key, so all else is valid) whose segments contain - or _.
    const tried: string[] = [];
    for (let n = 0; n < 200 && tried.length < 6; n++) {
      const token = forge(headerOf(), claimsOf({ role: `member-${n}` }));
      const parts = segments(token);
      for (const i of [1, 2]) {
        if (!/[-_]/.test(parts[i]!)) continue;
        const variant = parts.map((seg, j) => (j === i ? seg.replace(/-/g, "+").replace(/_/g, "/") : seg)).join(".");
        await expectAccepted(token);
        await expectRejected(variant);
        tried.push(variant);
      }
    }
    expect(tried.length).toBeGreaterThan(0);
  });

  it("a non-canonical payload correctly signed by our key (the signature covers the odd text)", async () => {
    const h = b64u(JSON.stringify(headerOf()));
    const p = b64u(JSON.stringify(claimsOf()));
    const variants = [`${p}=`, `${p}==`, `${p.slice(0, 20)}\n${p.slice(20)}`];
    if (p.length % 4 !== 0) variants.push(`${p.slice(0, -1)}${siblings(p.at(-1)!)[0]}`);
    for (const odd of variants) await expectRejected(signRaw(`${h}.${odd}`));
    await expectAccepted(signRaw(`${h}.${p}`));
  });

  it("non-ASCII characters in the token", async () => {
    const [h, p, s] = segments(genuine.token);
    await expectRejected(`${h}.${p}.${s.slice(0, -1)}é`);
    await expectRejected(`${h}.${p}\u00a0.${s}`);
  });
});

describe("wrong segment counts and empty segments", () => {
  it.each([
    ["1 part", (h: string, _p: string, _s: string) => h],
    ["2 parts", (h: string, p: string) => `${h}.${p}`],
    ["4 parts", (h: string, p: string, s: string) => `${h}.${p}.${s}.${s}`],
    ["4 parts, trailing dot", (h: string, p: string, s: string) => `${h}.${p}.${s}.`],
    ["5 parts (JWE shape)", (h: string, p: string, s: string) => `${h}.${p}.${s}.${p}.${s}`],
    ["empty header", (_h: string, p: string, s: string) => `.${p}.${s}`],
    ["empty payload", (h: string, _p: string, s: string) => `${h}..${s}`],
    ["empty signature", (h: string, p: string) => `${h}.${p}.`],
    ["only dots", () => ".."],
    ["four dots", () => "...."],
    ["a single dot", () => "."],
    ["no dots, garbage", () => "garbage"],
  ] as const)("%s", async (_name, build) => {
    const [h, p, s] = segments(genuine.token);
    await expectRejected(build(h, p, s));
  });
});

describe("undecodable header or payload (signed by our key)", () => {
  const good = () => claimsOf();
  it.each([
    ["header invalid UTF-8", () => Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]), good],
    ["header not JSON", () => "not json", good],
    ["header a JSON array", () => "[]", good],
    ["header a JSON string", () => '"EdDSA"', good],
    ["header JSON null", () => "null", good],
    ["payload invalid UTF-8", () => headerOf(), () => Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d])],
    ["payload not JSON", () => headerOf(), () => "not json"],
    ["payload a JSON array", () => headerOf(), () => JSON.stringify([good()])],
    ["payload a JSON string", () => headerOf(), () => '"claims"'],
    ["payload a number", () => headerOf(), () => "42"],
    ["payload null", () => headerOf(), () => "null"],
    ["payload true", () => headerOf(), () => "true"],
    ["payload empty object", () => headerOf(), () => "{}"],
  ] as [string, () => Json | string | Buffer, () => Json | string | Buffer][])("%s", async (_name, header, payload) => {
    await expectRejected(forge(header(), payload()));
  });
});

describe("claims (correctly signed by our key)", () => {
  it.each(["exp", "iat", "nbf", "iss", "sub", "aud", "sid", "jti", "tenant_id", "role", "mfa_verified"])("missing %s", async (claim) => {
    await expectRejected(forge(headerOf(), claimsOf({}, [claim])));
  });

  it("aud as a list, even one holding only our tenant, is invalid_token (not tenant_mismatch)", async () => {
    await expectRejected(forge(headerOf(), claimsOf({ aud: [server.tenant.id] })));
    await expectRejected(forge(headerOf(), claimsOf({ aud: 42 })));
  });

  const raw = (over: Json, replace: [string, string]) => JSON.stringify(claimsOf(over)).replace(replace[0], replace[1]);
  it.each([
    ["exp a string", () => claimsOf({ exp: String(nowSeconds() + 900) })],
    ["exp a float", () => claimsOf({ exp: nowSeconds() + 900.5 })],
    ["exp 1e999 (Infinity)", () => raw({ exp: 1 }, ['"exp":1', '"exp":1e999'])],
    ["exp 1e20 (beyond safe integers)", () => raw({ exp: 1 }, ['"exp":1', '"exp":1e20'])],
    ["exp negative", () => claimsOf({ exp: -1 })],
    ["exp null", () => claimsOf({ exp: null })],
    ["exp true", () => claimsOf({ exp: true })],
    ["exp an array", () => claimsOf({ exp: [nowSeconds() + 900] })],
    ["iat a float", () => claimsOf({ iat: nowSeconds() + 0.5 })],
    ["iat a string", () => claimsOf({ iat: String(nowSeconds()) })],
    ["iat negative", () => claimsOf({ iat: -5 })],
    ["nbf a float", () => claimsOf({ nbf: nowSeconds() - 0.5 })],
    ["nbf negative", () => claimsOf({ nbf: -1 })],
    ["exp not after iat", () => claimsOf({ exp: nowSeconds() })],
    ["exp far beyond iat + the longest TTL", () => claimsOf({ exp: nowSeconds() + 10 * 365 * 24 * 3600 })],
    ["exp the largest safe integer", () => claimsOf({ exp: Number.MAX_SAFE_INTEGER })],
    ...(["sub", "sid", "tenant_id", "role", "jti", "org_id"] as const).flatMap((claim) =>
      ([null, 42, true, {}, ["x"]] as unknown[]).map((value) => [`${claim} ${JSON.stringify(value)}`, () => claimsOf({ [claim]: value })] as [string, () => Json]),
    ),
    ...([null, "true", 1, {}, []] as unknown[]).map((value) => [`mfa_verified ${JSON.stringify(value)}`, () => claimsOf({ mfa_verified: value })] as [string, () => Json]),
    ["role with a right-to-left override", () => claimsOf({ role: "admin\u202E" })],
    ["role with a line feed", () => claimsOf({ role: "member\nadmin" })],
    ["role empty", () => claimsOf({ role: "" })],
    ["sub with a line separator", () => claimsOf({ sub: "usr\u2028x" })],
    ["org_id empty", () => claimsOf({ org_id: "" })],
    ["wrong iss", () => claimsOf({ iss: "https://evil.example" })],
    ["iss an array containing ours", () => claimsOf({ iss: [server.config.issuer] })],
  ] as [string, () => Json | string][])("%s", async (_name, payload) => {
    await expectRejected(forge(headerOf(), payload()));
  });

  it("iat in the future: accepted up to the tolerance, rejected beyond", async () => {
    const now = nowSeconds();
    await expectAccepted(forge(headerOf(), claimsOf({ iat: now + clockToleranceSeconds, nbf: now, exp: now + 900 })));
    await expectRejected(forge(headerOf(), claimsOf({ iat: now + clockToleranceSeconds + 1, nbf: now, exp: now + 900 })));
  });

  it("nbf in the future: accepted up to the tolerance, rejected beyond", async () => {
    const now = nowSeconds();
    await expectAccepted(forge(headerOf(), claimsOf({ nbf: now + clockToleranceSeconds })));
    await expectRejected(forge(headerOf(), claimsOf({ nbf: now + clockToleranceSeconds + 1 })));
  });

  it("exp up to iat + the longest TTL + tolerance is accepted; one second more is not", async () => {
    const iat = nowSeconds();
    await expectAccepted(forge(headerOf(), claimsOf({ iat, nbf: iat, exp: iat + maxAccessTokenTtlSeconds + clockToleranceSeconds })));
    await expectRejected(forge(headerOf(), claimsOf({ iat, nbf: iat, exp: iat + maxAccessTokenTtlSeconds + clockToleranceSeconds + 1 })));
  });

  it("typ must be exactly at+jwt", async () => {
    for (const typ of ["JWT", "jwt", "AT+JWT", "at+JWT", "At+Jwt", "application/at+jwt", "at+jwt ", "", 1, null]) {
      await expectRejected(forge(headerOf({ typ }), claimsOf()));
    }
    await expectRejected(forge(headerOf({}, ["typ"]), claimsOf()));
  });
});

describe("expiry boundaries (injected clock, no sleeping)", () => {
  it("valid until exp + tolerance, token_expired from then on", async () => {
    const start = clock.now();
    const iat = nowSeconds();
    const exp = iat + 60;
    const token = forge(headerOf(), claimsOf({ iat, nbf: iat, exp }));
    try {
      for (const [offset, expected] of [
        [-clockToleranceSeconds, true],
        [0, true],
        [clockToleranceSeconds - 1, true],
        [clockToleranceSeconds - 0.001, true],
        [clockToleranceSeconds, false],
        [clockToleranceSeconds + 1, false],
        [3600, false],
      ] as const) {
        clock.set(new Date((exp + offset) * 1000));
        if (expected) await expectAccepted(token);
        else await expectRejected(token, "token_expired");
      }
      // The genuine token the same way: it expires 15 minutes after it was issued.
      const genuineExp = JSON.parse(Buffer.from(segments(genuine.token)[1], "base64url").toString()).exp as number;
      clock.set(new Date((genuineExp + clockToleranceSeconds - 1) * 1000));
      await expectAccepted(genuine.token);
      clock.set(new Date((genuineExp + clockToleranceSeconds) * 1000));
      await expectRejected(genuine.token, "token_expired");
    } finally {
      clock.set(start);
    }
  });
});

describe("oversized tokens", () => {
  /**
   * A token signed by our key, with honest claims, of exactly `length` characters (padded with a
   * claim), or undefined when no such token exists: canonical base64url segments are never 1 mod 4
   * characters long, so with our fixed header some lengths cannot occur.
   */
  function tokenOfLength(length: number): string | undefined {
    const base = forge(headerOf(), claimsOf({ role: "m", pad: "" })).length;
    for (let pad = Math.max(0, Math.floor(((length - base) * 3) / 4) - 8); pad < length; pad++) {
      for (let extra = 0; extra < 3; extra++) {
        const token = forge(headerOf(), claimsOf({ role: "m".repeat(1 + extra), pad: "x".repeat(pad) }));
        if (token.length === length) return token;
      }
      if (forge(headerOf(), claimsOf({ role: "m", pad: "x".repeat(pad) })).length > length) return undefined;
    }
    return undefined;
  }

  it(`${maxAccessTokenLength} characters is still verified; anything longer is rejected before any parsing`, async () => {
    const atLimit = tokenOfLength(maxAccessTokenLength);
    expect(atLimit).toBeDefined();
    const justOver = [1, 2, 3, 4].map((d) => tokenOfLength(maxAccessTokenLength + d)).filter((t) => t !== undefined);
    expect(justOver.length).toBeGreaterThanOrEqual(2);
    const spy = vi.spyOn(server.services.keyRing, "verify");
    try {
      await expectAccepted(atLimit!);
      expect(spy).toHaveBeenCalled();
      spy.mockClear();
      // Honestly signed, unexpired, only too long.
      for (const token of justOver) await expectRejected(token);
      await expectRejected(genuine.token + "A".repeat(maxAccessTokenLength + 1 - genuine.token.length));
      await expectRejected(`${genuine.token}.${"A".repeat(5000)}`);
      await expectRejected("a".repeat(50_000));
      expect(spy).not.toHaveBeenCalled();
    } finally {
      spy.mockRestore();
    }
  });
});

describe("precedence when several checks fail", () => {
  const expiredClaims = (over: Json = {}) => {
    const now = nowSeconds();
    return claimsOf({ iat: now - 1000, nbf: now - 1000, exp: now - 100, ...over });
  };

  it("control: expired and otherwise fine is token_expired", async () => {
    await expectRejected(forge(headerOf(), expiredClaims()), "token_expired");
  });

  it("bad signature + expired → invalid_token (the signature is checked before the claims)", async () => {
    await expectRejected(forge(headerOf(), expiredClaims(), signWithAttacker));
    const [h, p, s] = segments(forge(headerOf(), expiredClaims()));
    await expectRejected(`${h}.${p}.${s.slice(0, -2)}${s.at(-2) === "A" ? "B" : "A"}${s.at(-1)}`);
  });

  it("bad format + expired → invalid_token", async () => {
    await expectRejected(`${forge(headerOf(), expiredClaims())}=`);
    await expectRejected(forge(headerOf({ jku: `${lureUrl}/k` }), expiredClaims()));
  });

  it("nonsense claims + expired → invalid_token", async () => {
    const now = nowSeconds();
    await expectRejected(forge(headerOf(), expiredClaims({ iat: now - 1000.5 })));
    await expectRejected(forge(headerOf(), expiredClaims({ iat: now - 10 * 365 * 24 * 3600 })));
    await expectRejected(forge(headerOf(), expiredClaims({ iss: "https://evil.example" })));
    const withoutSid = expiredClaims();
    delete withoutSid.sid;
    await expectRejected(forge(headerOf(), withoutSid));
    await expectRejected(forge(headerOf({ typ: "JWT" }), expiredClaims()));
  });

  it("expired + another tenant → token_expired; unexpired → tenant_mismatch", async () => {
    const other = await server.addTenant("Other");
    await expectRejected(forge(headerOf(), expiredClaims()), "token_expired", other.headers);
    await expectRejected(forge(headerOf(), claimsOf()), "tenant_mismatch", other.headers);
  });

  it("expired + revoked session → token_expired; another tenant + revoked → tenant_mismatch; else session_revoked", async () => {
    const res = await fetch(`${server.url}/v1/sessions`, {
      method: "POST",
      headers: { ...headers, "content-type": "application/json" },
      body: JSON.stringify({ user_id: "usr_attack_revoked" }),
    });
    const { session } = (await res.json()) as { session: { id: string } };
    expect((await fetch(`${server.url}/v1/sessions/${session.id}`, { method: "DELETE", headers })).status).toBe(204);
    const on = { sid: session.id, sub: "usr_attack_revoked" };
    await expectRejected(forge(headerOf(), expiredClaims(on)), "token_expired");
    const other = await server.addTenant("Other2");
    await expectRejected(forge(headerOf(), claimsOf(on)), "tenant_mismatch", other.headers);
    await expectRejected(forge(headerOf(), claimsOf(on)), "session_revoked");
  });

  it("oversized + otherwise valid → invalid_token", async () => {
    await expectRejected(forge(headerOf(), claimsOf({ pad: "x".repeat(maxAccessTokenLength) })));
  });

  it("an empty token is a request error, not a verify result: 400 invalid_request / InvalidArgument", async () => {
    const res = await fetch(`${server.url}/v1/sessions/verify`, {
      method: "POST",
      headers: { ...headers, "content-type": "application/json" },
      body: JSON.stringify({ token: "" }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_request");
    const err = await rpc.verifyToken({ token: "" }, { headers }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
  });
});

describe("nothing is keyed on the raw token string", () => {
  it("two byte-different encodings of the genuine token are both rejected, before and after the genuine one is accepted", async () => {
    const [h, p, s] = segments(genuine.token);
    const last = s.at(-1)!;
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const sibling = alphabet[alphabet.indexOf(last) ^ 1]!;
    const variants = [`${h}.${p}.${s.slice(0, -1)}${sibling}`, `${h}.${p}.${s}==`];
    for (const v of variants) expect(Buffer.from(v.split(".")[2]!, "base64url").equals(Buffer.from(s, "base64url"))).toBe(true);
    for (const v of variants) await expectRejected(v);
    await expectAccepted(genuine.token);
    for (const v of variants) await expectRejected(v);
    await expectAccepted(genuine.token);
  });
});
