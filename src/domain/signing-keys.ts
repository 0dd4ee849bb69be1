import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as signBytes, type KeyObject } from "node:crypto";
import { lruCache } from "./lru.js";
import { errors as joseErrors, jwtVerify, type JWK, type JWTPayload, type ProtectedHeaderParameters } from "jose";
import { throwIfCancelled } from "./call-context.js";
import type { Clock } from "./clock.js";
import { checkEd25519PublicKey } from "./ed25519-point.js";
import type { SigningKeyRecord } from "./model.js";
import type { SigningKeyStore } from "./ports.js";
import { newId, seal, unseal } from "./secrets.js";
import { checkClaimSanity, checkTokenFormat } from "./token-format.js";

/**
 * JWKS responses may be cached this long. Rotation publishes a new key at least this far ahead of
 * signing with it, so every verifier that honours the header has it before its first token.
 */
export const jwksMaxAgeSeconds = 300;

/**
 * A retired key stays published this long after it last signed: the longest access-token TTL a
 * tenant may configure, so every token it signed has expired before it drops out of JWKS.
 */
export const maxAccessTokenTtlSeconds = 24 * 60 * 60;

/**
 * A rotation publishes its new key this long before the key signs: twice the JWKS max-age, so a
 * verifier that fetched JWKS just before the rotation has refetched it once more before it matters.
 */
export const rotationLeadSeconds = 2 * jwksMaxAgeSeconds;

/**
 * How often an instance re-reads the key table, picking up rotations and emergency revocations made
 * elsewhere: the bound on how long a revoked key may still verify on another instance.
 */
export const reloadIntervalMs = 5_000;
/** An unknown `kid` may trigger a reload at most this often, so junk tokens cannot flood the database. */
const unknownKidReloadMs = 5_000;

/** Allowance for clocks of the signer and the verifier disagreeing. */
export const clockToleranceSeconds = 30;

interface LoadedKey {
  record: SigningKeyRecord;
  publicKey: KeyObject;
}

export interface KeyRingOptions {
  store: SigningKeyStore;
  keyEncryptionKey: Buffer;
  clock: Clock;
  issuer: string;
  /** Told once about each stored key that fails checkSigningKey (it is skipped). */
  onInvalidKey?: (id: string, reason: string) => void;
}

/** KEY_ENCRYPTION_KEY cannot be the one the stored keys were encrypted with: start-up stops. */
export class KeyEncryptionKeyError extends Error {
  override readonly name = "KeyEncryptionKeyError";
}

export type AccessTokenClaims = JWTPayload & {
  sid: string;
  tenant_id: string;
  role: string;
  org_id?: string;
  mfa_verified: boolean;
};

export type TokenCheck =
  | { ok: true; claims: AccessTokenClaims; header: ProtectedHeaderParameters }
  | { ok: false; code: "token_expired" | "invalid_token"; message: string };

/** AES-256-GCM with the key id as associated data: a ciphertext cannot be moved to another key row. */
export function encryptPrivateKey(kek: Buffer, kid: string, privateKey: KeyObject): Buffer {
  return seal(kek, kid, privateKey.export({ format: "der", type: "pkcs8" }));
}

export function decryptPrivateKey(kek: Buffer, kid: string, blob: Buffer): KeyObject {
  return createPrivateKey({ key: decryptKeyBytes(kek, kid, blob), format: "der", type: "pkcs8" });
}

/** The stored private key's bytes (PKCS#8 DER when sound); throws when `kek` does not decrypt them. */
function decryptKeyBytes(kek: Buffer, kid: string, blob: Buffer): Buffer {
  return unseal(kek, kid, blob);
}

/** Makes a new Ed25519 key record that starts signing at `signsFrom`. */
export function newSigningKey(kek: Buffer, now: Date, signsFrom: Date): SigningKeyRecord {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const id = newId("key");
  return {
    id,
    publicX: publicKey.export({ format: "jwk" }).x as string,
    privateKeyEncrypted: encryptPrivateKey(kek, id, privateKey),
    createdAt: now,
    signsFrom,
    retiredAt: null,
    revokedAt: null,
  };
}

/**
 * Whether a stored key may be trusted: its public half is a 32-byte Ed25519 point of large order,
 * and its private half decrypts with the KEK and belongs to that public half. A row that fails
 * (corrupted, planted, or encrypted under another KEK) is never published, never used to verify or
 * sign. Returns why not, or undefined when the key is sound.
 */
export function checkSigningKey(kek: Buffer, record: SigningKeyRecord): { reason: string } | undefined {
  const x = Buffer.from(record.publicX, "base64url");
  if (x.toString("base64url") !== record.publicX) return { reason: "the public key is not canonical base64url" };
  const point = checkEd25519PublicKey(x);
  if (!point.ok) return { reason: point.reason };
  let der: Buffer;
  try {
    der = decryptKeyBytes(kek, record.id, record.privateKeyEncrypted);
  } catch {
    return { reason: "the private key does not decrypt with KEY_ENCRYPTION_KEY" };
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  } catch {
    return { reason: "the private key decrypts but is not a PKCS#8 private key" };
  }
  if (privateKey.asymmetricKeyType !== "ed25519" || createPublicKey(privateKey).export({ format: "jwk" }).x !== record.publicX) {
    return { reason: "the private key does not belong to the public key" };
  }
  return undefined;
}

function decrypts(kek: Buffer, record: SigningKeyRecord): boolean {
  try {
    decryptKeyBytes(kek, record.id, record.privateKeyEncrypted);
    return true;
  } catch {
    return false;
  }
}

/**
 * Stops whatever is about to use `kek` with these stored keys (the service's start, a rotation, a
 * revoke) when it decrypts none of them: it is not the key they were encrypted with, and a key made
 * with it now would be one no instance can use.
 */
function assertKeyEncryptionKeyFits(kek: Buffer, records: SigningKeyRecord[]): void {
  if (records.length > 0 && !records.some((r) => decrypts(kek, r))) {
    throw new KeyEncryptionKeyError(
      "KEY_ENCRYPTION_KEY does not decrypt any signing key stored in the database: it is not the key they were encrypted with (or every stored key is damaged)",
    );
  }
}

/** Keys in JWKS: not revoked, and either still signing or retired recently enough for tokens to live. */
export function isPublished(k: SigningKeyRecord, now: Date): boolean {
  if (k.revokedAt !== null) return false;
  return k.retiredAt === null || k.retiredAt.getTime() + maxAccessTokenTtlSeconds * 1000 > now.getTime();
}

/** The key to sign with: the newest published key whose signing time has come and that is not retired. */
export function pickSigningKey(keys: SigningKeyRecord[], now: Date): SigningKeyRecord | undefined {
  return keys
    .filter((k) => isPublished(k, now) && k.signsFrom <= now && (k.retiredAt === null || k.retiredAt > now))
    .sort((a, b) => b.signsFrom.getTime() - a.signsFrom.getTime() || (a.id < b.id ? 1 : -1))[0];
}

/**
 * Schedules the next signing key: published now, signing from now + rotationLeadSeconds, when the
 * current key retires. Under the cross-instance lock, a key already scheduled is returned instead of
 * making a second one, so two instances rotating at once produce one key.
 */
export async function rotateSigningKey(store: SigningKeyStore, kek: Buffer, now: Date): Promise<{ key: SigningKeyRecord; isNew: boolean }> {
  return store.withSigningKeyLock(async () => {
    // Rows that fail checkSigningKey are never published: they count for nothing here either.
    const records = await store.listSigningKeys();
    assertKeyEncryptionKeyFits(kek, records);
    const keys = records.filter((k) => checkSigningKey(kek, k) === undefined);
    const pending = keys.find((k) => k.revokedAt === null && k.signsFrom > now);
    if (pending !== undefined) return { key: pending, isNew: false };
    // With no key signing yet there is nothing to hand over from: the new key signs at once.
    const current = pickSigningKey(keys, now);
    const signsFrom = current ? new Date(now.getTime() + rotationLeadSeconds * 1000) : now;
    const key = newSigningKey(kek, now, signsFrom);
    await store.insertSigningKey(key);
    for (const k of keys) if (k.revokedAt === null && k.retiredAt === null) await store.retireSigningKey(k.id, signsFrom);
    return { key, isNew: true };
  });
}

/**
 * Emergency revocation: the key leaves JWKS and its tokens stop verifying (on every instance within
 * reloadIntervalMs). If no usable signing key is left, one is made that signs at once: without lead
 * time, verifiers refetch JWKS when they meet its unknown kid.
 */
export async function revokeSigningKey(store: SigningKeyStore, kek: Buffer, id: string, now: Date): Promise<boolean> {
  return store.withSigningKeyLock(async () => {
    assertKeyEncryptionKeyFits(kek, await store.listSigningKeys());
    if (!(await store.revokeSigningKey(id, now))) return false;
    await insertKeyIfNoneSigns(store, kek, now);
    return true;
  });
}

/**
 * Makes a key that signs at once when none can sign now. Call it holding the signing-key lock, so
 * instances doing it together make one key. Without lead time: verifiers refetch JWKS on its unknown kid.
 */
async function insertKeyIfNoneSigns(store: SigningKeyStore, kek: Buffer, now: Date): Promise<void> {
  const sound = (await store.listSigningKeys()).filter((k) => checkSigningKey(kek, k) === undefined);
  if (pickSigningKey(sound, now) === undefined) {
    await store.insertSigningKey(newSigningKey(kek, now, now));
  }
}

/** What the key ring knows of its own health, for readiness and metrics. */
export interface KeyRingStatus {
  /** When the key table was last read successfully (epoch ms); 0 before the first read. */
  lastReloadAt: number;
  /** Failed background reloads since start. */
  reloadFailures: number;
  /** Ids of stored keys refused by checkSigningKey at the last reload, with why. */
  invalidKeys: { id: string; reason: string }[];
  published: number;
}

/** A reload older than this many intervals means the ring has lost touch with the key table. */
const staleAfterIntervals = 3;

export interface KeyRing {
  /**
   * Loads keys, creating the first one if the database has none; then reloads in the background.
   * Fails when stored keys exist and none of them decrypts: KEY_ENCRYPTION_KEY is not theirs.
   */
  start(): Promise<void>;
  stop(): void;
  reload(): Promise<void>;
  status(): KeyRingStatus;
  /** False once reloads have failed for longer than a few intervals: revocations may be missed. */
  isFresh(): boolean;
  jwks(): { keys: JWK[] };
  sign(claims: AccessTokenClaims, issuedAt: Date, expiresAt: Date): Promise<string>;
  verify(token: string): Promise<TokenCheck>;
}

export function createKeyRing({ store, keyEncryptionKey, clock, issuer, onInvalidKey }: KeyRingOptions): KeyRing {
  let published = new Map<string, LoadedKey>();
  const privateKeys = new Map<string, KeyObject>();
  // Key material never changes once written: each row is checked once, by its content.
  const checked = new Map<string, ReturnType<typeof checkSigningKey>>();
  let timer: NodeJS.Timeout | undefined;
  let lastUnknownKidReload = 0;
  const health: KeyRingStatus = { lastReloadAt: 0, reloadFailures: 0, invalidKeys: [], published: 0 };
  /**
   * Tokens whose signature and claims checked out, by SHA-256 of the token (the token itself is not
   * kept), until they expire: a backend presents the same token on every request of its user, and
   * the signature check is the one costly step of verify. An entry counts only while its key is
   * still published, so a revoked key's tokens fail at once; the session's state is still read on
   * every verify. Bounded: 50,000 tokens of ~1 KB of claims each.
   */
  const verified = lruCache<string, { claims: AccessTokenClaims; header: ProtectedHeaderParameters }>(50_000);

  /** Reads the key table; a bad row is skipped and reported, the good ones load all the same. */
  async function reload(): Promise<void> {
    const now = clock.now();
    const records = await store.listSigningKeys();
    const next = new Map<string, LoadedKey>();
    const invalid: KeyRingStatus["invalidKeys"] = [];
    for (const record of records.filter((k) => isPublished(k, now))) {
      const content = `${record.id}\0${record.publicX}\0${record.privateKeyEncrypted.toString("base64")}`;
      if (!checked.has(content)) checked.set(content, checkSigningKey(keyEncryptionKey, record));
      const problem = checked.get(content);
      if (problem !== undefined) {
        invalid.push({ id: record.id, reason: problem.reason });
        continue;
      }
      const known = published.get(record.id);
      next.set(record.id, {
        record,
        publicKey: known?.publicKey ?? createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: record.publicX }, format: "jwk" }),
      });
    }
    for (const bad of invalid) if (!health.invalidKeys.some((k) => k.id === bad.id)) onInvalidKey?.(bad.id, bad.reason);
    published = next;
    Object.assign(health, { lastReloadAt: Date.now(), invalidKeys: invalid, published: next.size });
  }

  /** Picked at each signing from the keys this instance publishes, so it never signs with another. */
  function currentSigner(): { kid: string; privateKey: KeyObject } | undefined {
    const pick = pickSigningKey([...published.values()].map((k) => k.record), clock.now());
    if (pick === undefined) return undefined;
    let privateKey = privateKeys.get(pick.id);
    if (privateKey === undefined) {
      privateKey = decryptPrivateKey(keyEncryptionKey, pick.id, pick.privateKeyEncrypted);
      privateKeys.set(pick.id, privateKey);
    }
    return { kid: pick.id, privateKey };
  }

  async function getKey(header: ProtectedHeaderParameters): Promise<KeyObject> {
    const kid = header.kid;
    if (typeof kid !== "string") throw new joseErrors.JWKSNoMatchingKey();
    let key = published.get(kid);
    const nowMs = Date.now();
    if (key === undefined && nowMs - lastUnknownKidReload > unknownKidReloadMs) {
      lastUnknownKidReload = nowMs;
      await reload();
      key = published.get(kid);
    }
    if (key === undefined) throw new joseErrors.JWKSNoMatchingKey();
    return key.publicKey;
  }

  return {
    async start() {
      assertKeyEncryptionKeyFits(keyEncryptionKey, await store.listSigningKeys());
      await reload();
      if (currentSigner() === undefined) {
        // The very first key may sign at once: no verifier can have cached a JWKS without it.
        await store.withSigningKeyLock(() => insertKeyIfNoneSigns(store, keyEncryptionKey, clock.now()));
        await reload();
      }
      timer = setInterval(
        () =>
          void reload().catch(() => {
            health.reloadFailures++;
          }),
        reloadIntervalMs,
      );
      timer.unref();
    },
    stop() {
      clearInterval(timer);
    },
    reload,
    status: () => ({ ...health, invalidKeys: [...health.invalidKeys] }),
    isFresh: () => Date.now() - health.lastReloadAt <= staleAfterIntervals * reloadIntervalMs,
    jwks() {
      return {
        keys: [...published.values()].map(({ record }) => ({
          kty: "OKP",
          crv: "Ed25519",
          x: record.publicX,
          kid: record.id,
          alg: "EdDSA",
          use: "sig",
        })),
      };
    },
    async sign(claims, issuedAt, expiresAt) {
      const signer = currentSigner();
      if (signer === undefined) throw new Error("no signing key is available");
      const iat = Math.floor(issuedAt.getTime() / 1000);
      // A compact JWS (RFC 7515) made here rather than by jose's SignJWT: node's synchronous Ed25519
      // signature costs a fraction of WebCrypto's (a thread-pool job and copies of the input per
      // call). The header is exactly the one checkTokenFormat admits; tests verify the tokens with jose.
      const header = base64urlJson({ alg: "EdDSA", kid: signer.kid, typ: "at+jwt" });
      const payload = base64urlJson({ ...claims, iss: issuer, iat, nbf: iat, exp: Math.floor(expiresAt.getTime() / 1000) });
      const signingInput = `${header}.${payload}`;
      return `${signingInput}.${signBytes(null, Buffer.from(signingInput), signer.privateKey).toString("base64url")}`;
    },
    async verify(token) {
      const invalid = { ok: false, code: "invalid_token", message: "the access token is invalid" } as const;
      const now = clock.now();
      const digest = createHash("sha256").update(token).digest("base64");
      const known = verified.get(digest);
      if (known !== undefined && published.has(known.header.kid as string)) {
        // Verified before, by a key still published: only time can have changed the answer.
        if ((known.claims.exp as number) <= Math.floor(now.getTime() / 1000) - clockToleranceSeconds) {
          return { ok: false, code: "token_expired", message: "the access token has expired" };
        }
        return { ok: true, claims: known.claims, header: known.header };
      }
      // Shape, canonical encoding and the exact header first: nothing else reaches jose.
      if (!checkTokenFormat(token).ok) return invalid;
      throwIfCancelled();
      try {
        const { payload, protectedHeader } = await jwtVerify<AccessTokenClaims>(token, getKey, {
          algorithms: ["EdDSA"],
          typ: "at+jwt",
          issuer,
          currentDate: now,
          clockTolerance: clockToleranceSeconds,
          requiredClaims: ["exp", "iat", "nbf", "jti", "sub", "aud", "sid", "tenant_id", "role", "mfa_verified"],
        });
        if (checkClaimSanity(payload, now, clockToleranceSeconds, maxAccessTokenTtlSeconds) !== undefined) return invalid;
        // Kept until the token expires (it verifies the same way every time until then).
        const ttl = ((payload.exp as number) + clockToleranceSeconds) * 1000 - now.getTime();
        if (ttl > 0) verified.set(digest, { claims: payload, header: protectedHeader }, { ttl });
        return { ok: true, claims: payload, header: protectedHeader };
      } catch (err) {
        // An expired token is token_expired only when nothing else is wrong with it.
        if (err instanceof joseErrors.JWTExpired) {
          return checkClaimSanity(err.payload, now, clockToleranceSeconds, maxAccessTokenTtlSeconds) === undefined
            ? { ok: false, code: "token_expired", message: "the access token has expired" }
            : invalid;
        }
        if (err instanceof joseErrors.JOSEError) return invalid;
        throw err;
      }
    },
  };
}

function base64urlJson(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}
