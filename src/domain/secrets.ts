import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, randomFillSync, timingSafeEqual } from "node:crypto";
import { monotonicFactory } from "ulid";

/**
 * Randomness drawn from the CSPRNG 4 KiB at a time and handed out in pieces, each byte once: the
 * ULID library asks for one byte per character (16 per id), and a crypto call per id or per
 * secret cost more than the bytes themselves (12% of a create for ids, 2% for the refresh token).
 */
const randomPool = Buffer.alloc(4096);
let randomAt = randomPool.length;

/** The next `n` (≤ 4096) pooled random bytes, as a view that the next draw may overwrite: use it at once. */
function drawRandom(n: number): Buffer {
  if (randomAt + n > randomPool.length) {
    randomFillSync(randomPool);
    randomAt = 0;
  }
  randomAt += n;
  return randomPool.subarray(randomAt - n, randomAt);
}

const pooledRandom = () => (drawRandom(1)[0] as number) / 256;

const ulid = monotonicFactory(pooledRandom);

/** Ids are a type prefix and a ULID: sortable by creation time, unguessable enough to be public. */
export function newId(prefix: "ses" | "tnt" | "key" | "at" | "whk"): string {
  return `${prefix}_${ulid()}`;
}

const ulidPattern = "[0-9A-HJKMNP-TV-Z]{26}";
export const idPatterns = {
  session: new RegExp(`^ses_${ulidPattern}$`),
  tenant: new RegExp(`^tnt_${ulidPattern}$`),
} as const;

/** 32 random bytes (256 bits) behind a prefix, base64url encoded: the shape of every bearer secret. */
export function newSecret(prefix: "rt_" | "sk_live_" | "sk_test_"): string {
  return prefix + drawRandom(32).toString("base64url");
}

/** 32 random bytes of the session's own for its refresh tokens' MACs (refresh-tokens.ts). */
export function newNonce(): Buffer {
  return Buffer.from(drawRandom(32));
}

/** Secrets are high-entropy, so one SHA-256 is the right hash: fast to check, infeasible to invert. */
export function hashSecret(secret: string): Buffer {
  return createHash("sha256").update(secret).digest();
}

export function hmac(key: Buffer, ...parts: string[]): Buffer {
  const mac = createHmac("sha256", key);
  for (const part of parts) mac.update(part).update("\0");
  return mac.digest();
}

/** Constant-time comparison; unequal lengths are unequal without looking at the bytes. */
export function equalBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Secrets the service must read back (signing keys' private halves, webhook signing secrets) are
 * stored sealed under the key-encryption key: AES-256-GCM, bound by `aad` to the row they belong to
 * (a sealed value copied to another row does not open). Format: version 1, 12-byte IV, 16-byte tag, body.
 */
export function seal(kek: Buffer, aad: string, plaintext: Buffer): Buffer {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", kek, iv).setAAD(Buffer.from(aad));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.from([1]), iv, cipher.getAuthTag(), body]);
}

/** The sealed bytes; throws when `kek` or `aad` is not theirs, or the format is unknown. */
export function unseal(kek: Buffer, aad: string, blob: Buffer): Buffer {
  if (blob[0] !== 1) throw new Error(`sealed value for ${aad}: unknown encryption format`);
  const decipher = createDecipheriv("aes-256-gcm", kek, blob.subarray(1, 13)).setAAD(Buffer.from(aad));
  decipher.setAuthTag(blob.subarray(13, 29));
  return Buffer.concat([decipher.update(blob.subarray(29)), decipher.final()]);
}
