import { createCipheriv, generateKeyPairSync, randomBytes } from "node:crypto";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { SigningKeyRecord } from "../../src/domain/model.js";
import type { SigningKeyStore } from "../../src/domain/ports.js";
import { newId } from "../../src/domain/secrets.js";
import {
  checkSigningKey,
  createKeyRing,
  encryptPrivateKey,
  KeyEncryptionKeyError,
  newSigningKey,
  reloadIntervalMs,
} from "../../src/domain/signing-keys.js";

/**
 * The key ring against an in-memory key table: every stored key is checked before it is published,
 * bad rows are skipped and reported while good ones load, reload failures show, a wrong KEK stops
 * start-up.
 */

const kek = randomBytes(32);
const now = new Date("2026-01-15T12:00:00Z");
const clock = { now: () => now };
const issuer = "https://issuer.example";
const b64u = (b: Buffer | string) => Buffer.from(b).toString("base64url");

function memoryStore(rows: SigningKeyRecord[]): SigningKeyStore & { rows: SigningKeyRecord[]; isBroken: boolean } {
  return {
    rows,
    isBroken: false,
    async listSigningKeys() {
      if (this.isBroken) throw new Error("the key table is unreadable");
      return [...this.rows];
    },
    async insertSigningKey(k) {
      this.rows.push(k);
    },
    async retireSigningKey() {},
    async revokeSigningKey() {
      return false;
    },
    withSigningKeyLock: (work) => work(),
  };
}

/** A row whose public half is `x` (raw bytes) and whose private half is some real key's, encrypted properly. */
function rowWithPublic(x: Buffer, encryptWith = kek): SigningKeyRecord {
  const id = newId("key");
  return {
    id,
    publicX: b64u(x),
    privateKeyEncrypted: encryptPrivateKey(encryptWith, id, generateKeyPairSync("ed25519").privateKey),
    createdAt: now,
    signsFrom: new Date(now.getTime() - 1000),
    retiredAt: null,
    revokedAt: null,
  };
}

const identityPoint = Buffer.concat([Buffer.from([1]), Buffer.alloc(31)]);
const order8Point = Buffer.from("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", "hex");

afterEach(() => {
  vi.useRealTimers();
});

/** A sound key's row whose private part is `bytes`, encrypted as the service encrypts (0x01 | iv | tag | AES-256-GCM, kid as AAD). */
function rowWithPrivateBytes(bytes: Buffer): SigningKeyRecord {
  const row = newSigningKey(kek, now, now);
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", kek, iv).setAAD(Buffer.from(row.id));
  const body = Buffer.concat([cipher.update(bytes), cipher.final()]);
  return { ...row, privateKeyEncrypted: Buffer.concat([Buffer.from([1]), iv, cipher.getAuthTag(), body]) };
}

describe("checkSigningKey", () => {
  it("accepts a key made by newSigningKey", () => {
    expect(checkSigningKey(kek, newSigningKey(kek, now, now))).toBeUndefined();
  });

  it.each<[string, () => SigningKeyRecord, RegExp]>([
    ["a 31-byte public key", () => rowWithPublic(randomBytes(31)), /31 bytes/],
    ["a 33-byte public key", () => rowWithPublic(randomBytes(33)), /33 bytes/],
    ["the identity point", () => rowWithPublic(identityPoint), /small order/],
    ["a point of order 8", () => rowWithPublic(order8Point), /small order/],
    ["a non-canonical y", () => rowWithPublic(Buffer.concat([Buffer.from([0xee]), Buffer.alloc(30, 0xff), Buffer.from([0x7f])])), /canonical/],
    ["padded base64", () => ({ ...newSigningKey(kek, now, now), publicX: `${newSigningKey(kek, now, now).publicX}=` }), /canonical base64url/],
    ["a private half under another KEK", () => ({ ...newSigningKey(randomBytes(32), now, now) }), /does not decrypt/],
    ["a raw 32-byte seed where the PKCS#8 key should be", () => rowWithPrivateBytes(randomBytes(32)), /decrypts but is not a PKCS#8/],
    ["halves of two different keys", () => rowWithPublic(Buffer.from(generateKeyPairSync("ed25519").publicKey.export({ format: "jwk" }).x as string, "base64url")), /does not belong/],
  ])("refuses %s", (_name, make, reason) => {
    expect(checkSigningKey(kek, make())?.reason).toMatch(reason);
  });
});

describe("the key ring", () => {
  it("publishes only sound keys, reports each bad row once, and refuses tokens forged for a small-order key", async () => {
    const good = newSigningKey(kek, now, new Date(now.getTime() - 1000));
    const smallOrder = rowWithPublic(identityPoint);
    const short = rowWithPublic(randomBytes(31));
    const store = memoryStore([good, smallOrder, short]);
    const reported: string[] = [];
    const ring = createKeyRing({ store, keyEncryptionKey: kek, clock, issuer, onInvalidKey: (id) => reported.push(id) });
    await ring.start();
    try {
      expect(ring.jwks().keys.map((k) => k.kid)).toEqual([good.id]);
      expect(ring.status()).toMatchObject({ published: 1, reloadFailures: 0 });
      expect(ring.status().invalidKeys.map((k) => k.id).sort()).toEqual([smallOrder.id, short.id].sort());
      await ring.reload();
      expect(reported.sort()).toEqual([smallOrder.id, short.id].sort());

      // The forgery a small-order key allows: R = A and S = 0 verifies for any message under A = identity.
      const header = b64u(JSON.stringify({ alg: "EdDSA", kid: smallOrder.id, typ: "at+jwt" }));
      const iat = Math.floor(now.getTime() / 1000);
      const payload = b64u(JSON.stringify({ sub: "u", aud: "tnt_x", jti: "at_1", sid: "ses_x", tenant_id: "tnt_x", role: "member", mfa_verified: false, iss: issuer, iat, nbf: iat, exp: iat + 600 }));
      const signature = Buffer.concat([identityPoint, Buffer.alloc(32)]);
      // Node 20's OpenSSL accepts this signature under that key (Node 24's refuses it); the key ring
      // never gets as far as asking, whatever the runtime.
      expect(await ring.verify(`${header}.${payload}.${b64u(signature)}`)).toMatchObject({ ok: false, code: "invalid_token" });

      // A good key added later still loads beside the bad rows.
      const next = newSigningKey(kek, now, new Date(now.getTime() + 600_000));
      store.rows.push(next);
      await ring.reload();
      expect(ring.jwks().keys.map((k) => k.kid).sort()).toEqual([good.id, next.id].sort());
    } finally {
      ring.stop();
    }
  });

  it("remembers verified tokens until they expire, but never past their key's withdrawal", async () => {
    let at = new Date(now);
    const ticking = { now: () => at };
    const key = newSigningKey(kek, at, new Date(at.getTime() - 1000));
    const store = memoryStore([key]);
    const ring = createKeyRing({ store, keyEncryptionKey: kek, clock: ticking, issuer });
    await ring.start();
    try {
      const claims = { sub: "u", aud: "tnt_1", jti: "at_1", sid: "ses_1", tenant_id: "tnt_1", role: "member", mfa_verified: false };
      const token = await ring.sign(claims, at, new Date(at.getTime() + 600_000));
      expect(await ring.verify(token)).toMatchObject({ ok: true, claims: { sid: "ses_1" } });
      expect(await ring.verify(token)).toMatchObject({ ok: true, claims: { sid: "ses_1" } });
      // Expiry is checked on every call, the cache notwithstanding (30 s of clock tolerance).
      at = new Date(at.getTime() + 630_000);
      expect(await ring.verify(token)).toMatchObject({ ok: false, code: "token_expired" });
      at = new Date(at.getTime() - 630_000);
      expect(await ring.verify(token)).toMatchObject({ ok: true });
      // Withdraw the key: the remembered token fails at once.
      store.rows.length = 0;
      store.rows.push({ ...key, revokedAt: at });
      await ring.reload();
      expect(await ring.verify(token)).toMatchObject({ ok: false, code: "invalid_token" });
    } finally {
      ring.stop();
    }
  });

  it("counts failed reloads and stops calling itself fresh after three intervals without one", async () => {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "Date"] });
    const store = memoryStore([newSigningKey(kek, now, new Date(now.getTime() - 1000))]);
    const ring = createKeyRing({ store, keyEncryptionKey: kek, clock, issuer });
    await ring.start();
    try {
      expect(ring.isFresh()).toBe(true);
      store.isBroken = true;
      await vi.advanceTimersByTimeAsync(3 * reloadIntervalMs);
      expect(ring.status().reloadFailures).toBe(3);
      expect(ring.isFresh()).toBe(true);
      await vi.advanceTimersByTimeAsync(reloadIntervalMs);
      expect(ring.isFresh()).toBe(false);
      store.isBroken = false;
      await vi.advanceTimersByTimeAsync(reloadIntervalMs);
      expect(ring.isFresh()).toBe(true);
    } finally {
      ring.stop();
    }
  });

  it("refuses to start when no stored key decrypts with KEY_ENCRYPTION_KEY", async () => {
    const otherKek = randomBytes(32);
    const store = memoryStore([newSigningKey(otherKek, now, now), newSigningKey(otherKek, now, now)]);
    const ring = createKeyRing({ store, keyEncryptionKey: kek, clock, issuer });
    await expect(ring.start()).rejects.toThrow(KeyEncryptionKeyError);
    await expect(ring.start()).rejects.toThrow(/KEY_ENCRYPTION_KEY/);
    expect(store.rows).toHaveLength(2);
  });

  it("starts past one undecryptable row among good ones, and makes the first key on an empty table", async () => {
    const store = memoryStore([newSigningKey(randomBytes(32), now, now), newSigningKey(kek, now, new Date(now.getTime() - 1000))]);
    const ring = createKeyRing({ store, keyEncryptionKey: kek, clock, issuer });
    await ring.start();
    ring.stop();
    expect(ring.jwks().keys).toHaveLength(1);
    const empty = memoryStore([]);
    const first = createKeyRing({ store: empty, keyEncryptionKey: kek, clock, issuer });
    await first.start();
    first.stop();
    expect(empty.rows).toHaveLength(1);
  });
});
