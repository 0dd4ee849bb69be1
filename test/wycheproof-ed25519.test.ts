import { verify as nodeVerify, createPublicKey, generateKeyPairSync, webcrypto } from "node:crypto";
import { readFileSync } from "node:fs";
import { CompactSign, compactVerify, importJWK, type JWK } from "jose";
import { describe, expect, it } from "vitest";

/**
 * Wycheproof's Ed25519 verification vectors (C2SP/wycheproof testvectors_v1/ed25519_test.json,
 * shipped byte-for-byte as a fixture) against the runtime that verifies our access tokens: jose 6 on
 * Node hands the signing input, the signature bytes and an Ed25519 CryptoKey to
 * `crypto.subtle.verify({ name: "Ed25519" }, …)`. A `valid` vector must verify, an `invalid` one must
 * not; `acceptable` (none in this file today) may go either way.
 *
 * Through jose itself only messages that are a JWS signing input (`<b64url header>.<payload>`) can be
 * expressed; the test looks for them and runs them through `compactVerify` too. No vector in the
 * current file has that shape, so jose's own path is exercised by the same kinds of mutations
 * (s + kL, s + 2^k, s + p, bit flips in R, R = 0, truncation, garbage, wrong lengths) applied to a
 * signature jose made.
 */

interface Vector {
  tcId: number;
  comment: string;
  flags: string[];
  msg: string;
  sig: string;
  result: "valid" | "invalid" | "acceptable";
}
interface Group {
  publicKey: { pk: string };
  publicKeyDer: string;
  publicKeyJwk: JWK;
  tests: Vector[];
}
interface Suite {
  algorithm: string;
  numberOfTests: number;
  testGroups: Group[];
}

const fixture = new URL("./fixtures/wycheproof/ed25519_test.json", import.meta.url);
const suite = JSON.parse(readFileSync(fixture, "utf8")) as Suite;
const cases = suite.testGroups.flatMap((group) => group.tests.map((vector) => ({ group, vector })));

type CryptoKey = webcrypto.CryptoKey;
const { subtle } = webcrypto;

async function webCryptoVerify(key: CryptoKey, sig: Uint8Array, msg: Uint8Array): Promise<boolean> {
  try {
    return await subtle.verify({ name: "Ed25519" }, key, sig, msg);
  } catch {
    // A malformed signature may throw instead of returning false: either way it is not accepted.
    return false;
  }
}

function nodeCryptoVerify(der: string, sig: Buffer, msg: Buffer): boolean {
  try {
    return nodeVerify(null, msg, createPublicKey({ key: Buffer.from(der, "hex"), format: "der", type: "spki" }), sig);
  } catch {
    return false;
  }
}

/** A message jose can be asked about: `<protected header>.<payload>`, both base64url, header JSON. */
function asCompactSigningInput(msg: Buffer): { protectedHeader: string; payload: string } | undefined {
  const m = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)$/.exec(msg.toString("latin1"));
  if (m === null) return undefined;
  try {
    const header = JSON.parse(Buffer.from(m[1]!, "base64url").toString("utf8")) as unknown;
    if (typeof header !== "object" || header === null || (header as { alg?: unknown }).alg !== "EdDSA") return undefined;
  } catch {
    return undefined;
  }
  return { protectedHeader: m[1]!, payload: m[2]! };
}

describe("Wycheproof Ed25519 fixture", () => {
  it("is the whole file: it parses and holds numberOfTests vectors", () => {
    expect(suite.algorithm).toBe("EDDSA");
    expect(cases.length).toBe(suite.numberOfTests);
    expect(cases.map((c) => c.vector.tcId)).toEqual(Array.from({ length: suite.numberOfTests }, (_, i) => i + 1));
    // Every group states its key four ways; they must agree (a transcription check on the fixture).
    for (const g of suite.testGroups) {
      expect(g.publicKeyDer).toBe(`302a300506032b6570032100${g.publicKey.pk}`);
      expect(Buffer.from(g.publicKeyJwk.x!, "base64url").toString("hex")).toBe(g.publicKey.pk);
    }
  });
});

describe("Wycheproof Ed25519 through WebCrypto (the primitive jose verifies with)", () => {
  const keys = new Map<Group, { raw: CryptoKey; viaJose: CryptoKey }>();
  async function keysFor(group: Group) {
    let k = keys.get(group);
    if (k === undefined) {
      k = {
        raw: await subtle.importKey("raw", Buffer.from(group.publicKey.pk, "hex"), { name: "Ed25519" }, false, ["verify"]),
        // The way jose imports a JWK for alg EdDSA (and the way our KeyObjects reach WebCrypto on Node 20).
        viaJose: (await importJWK({ ...group.publicKeyJwk, alg: "EdDSA" }, "EdDSA")) as unknown as CryptoKey,
      };
      keys.set(group, k);
    }
    return k;
  }

  it.each(cases.map((c) => [c.vector.tcId, c.vector.result, c.vector.comment || c.vector.flags.join(","), c]))(
    "tcId %i (%s): %s",
    async (_id, _result, _comment, { group, vector }) => {
      const msg = Buffer.from(vector.msg, "hex");
      const sig = Buffer.from(vector.sig, "hex");
      const { raw, viaJose } = await keysFor(group);
      const results = {
        webCryptoRaw: await webCryptoVerify(raw, sig, msg),
        webCryptoJwk: await webCryptoVerify(viaJose, sig, msg),
        nodeCrypto: nodeCryptoVerify(group.publicKeyDer, sig, msg),
      };
      if (vector.result === "acceptable") return;
      const expected = vector.result === "valid";
      expect(results).toEqual({ webCryptoRaw: expected, webCryptoJwk: expected, nodeCrypto: expected });

      const jws = asCompactSigningInput(msg);
      if (jws !== undefined) {
        const token = `${jws.protectedHeader}.${jws.payload}.${sig.toString("base64url")}`;
        const accepted = await compactVerify(token, viaJose, { algorithms: ["EdDSA"] }).then(() => true, () => false);
        expect(accepted).toBe(expected);
      }
    },
  );

  it("reports how many vectors jose's compactVerify could be asked about directly", () => {
    const expressible = cases.filter((c) => asCompactSigningInput(Buffer.from(c.vector.msg, "hex")) !== undefined);
    // None today: a Wycheproof message would have to begin with a base64url JOSE header and a dot.
    expect(expressible.length).toBe(0);
  });
});

describe("the same attacks on a JWS, through jose's compactVerify", () => {
  // Group order L and field prime p, little-endian as in an Ed25519 signature's s.
  const L = 2n ** 252n + 27742317777372353535851937790883648493n;
  const p = 2n ** 255n - 19n;
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");

  const toLE = (n: bigint) => {
    const out = Buffer.alloc(32);
    for (let i = 0; i < 32; i++) out[i] = Number((n >> BigInt(8 * i)) & 0xffn);
    return out;
  };
  const fromLE = (b: Buffer) => b.reduceRight((acc, byte) => (acc << 8n) | BigInt(byte), 0n);

  async function signed() {
    const token = await new CompactSign(new TextEncoder().encode('{"sub":"usr_1"}')).setProtectedHeader({ alg: "EdDSA" }).sign(privateKey);
    const [h, pl, s] = token.split(".") as [string, string, string];
    return { h, pl, sig: Buffer.from(s, "base64url") };
  }
  const accepts = (token: string) => compactVerify(token, publicKey, { algorithms: ["EdDSA"] }).then(() => true, () => false);

  it("accepts the untouched token", async () => {
    const { h, pl, sig } = await signed();
    expect(await accepts(`${h}.${pl}.${sig.toString("base64url")}`)).toBe(true);
  });

  const mutations: Record<string, (sig: Buffer) => Buffer> = {
    "s + L": (sig) => Buffer.concat([sig.subarray(0, 32), toLE(fromLE(sig.subarray(32)) + L)]),
    "s + 2L": (sig) => Buffer.concat([sig.subarray(0, 32), toLE(fromLE(sig.subarray(32)) + 2n * L)]),
    "s + 4L": (sig) => Buffer.concat([sig.subarray(0, 32), toLE(fromLE(sig.subarray(32)) + 4n * L)]),
    "s + 8L": (sig) => Buffer.concat([sig.subarray(0, 32), toLE(fromLE(sig.subarray(32)) + 8n * L)]),
    "s + 2^253": (sig) => Buffer.concat([sig.subarray(0, 32), toLE(fromLE(sig.subarray(32)) + 2n ** 253n)]),
    "s + p": (sig) => Buffer.concat([sig.subarray(0, 32), toLE(fromLE(sig.subarray(32)) + p)]),
    "bit 0 of R flipped": (sig) => flip(sig, 0),
    "bit 255 of R flipped (negated R)": (sig) => flip(sig, 255),
    "R = 0": (sig) => Buffer.concat([Buffer.alloc(32), sig.subarray(32)]),
    "s = 0": (sig) => Buffer.concat([sig.subarray(0, 32), Buffer.alloc(32)]),
    "all zero": () => Buffer.alloc(64),
    "empty": () => Buffer.alloc(0),
    "s missing": (sig) => sig.subarray(0, 32),
    "last byte dropped": (sig) => sig.subarray(0, 63),
    "zero byte appended": (sig) => Buffer.concat([sig, Buffer.alloc(1)]),
    "zero byte prepended": (sig) => Buffer.concat([Buffer.alloc(1), sig]),
    "public key appended": (sig) => Buffer.concat([sig, publicKey.export({ format: "der", type: "spki" }).subarray(12)]),
  };
  function flip(sig: Buffer, bit: number) {
    const out = Buffer.from(sig);
    out[bit >> 3]! ^= 1 << (bit & 7);
    return out;
  }

  for (const [name, mutate] of Object.entries(mutations)) {
    it(`rejects ${name}`, async () => {
      const { h, pl, sig } = await signed();
      const mutated = mutate(sig);
      expect(mutated.equals(sig)).toBe(false);
      expect(await accepts(`${h}.${pl}.${mutated.toString("base64url")}`)).toBe(false);
    });
  }
});
