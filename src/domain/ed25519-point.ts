/**
 * Checks an Ed25519 public key (RFC 8032 encoding) before it is trusted for verification: it must
 * decode to a point on the curve, canonically (y < p), and not be of small order. A small-order key
 * (the identity, the point of order 2, the order-4 and order-8 points) lets anyone forge signatures
 * for it without a private key, e.g. `R = A`, `S = 0` verifies for a share of all messages; OpenSSL
 * (and so node:crypto and jose) accepts such keys, so this is checked here. Plain BigInt arithmetic:
 * it runs once per key, never per token.
 */
const p = 2n ** 255n - 19n;
const d = mod(-121665n * inverse(121666n));
/** A square root of -1 mod p. */
const sqrtMinusOne = power(2n, (p - 1n) / 4n);

type Point = readonly [x: bigint, y: bigint];

export type PublicKeyCheck = { ok: true } | { ok: false; reason: string };

export function checkEd25519PublicKey(bytes: Uint8Array): PublicKeyCheck {
  if (bytes.length !== 32) return { ok: false, reason: `the public key is ${bytes.length} bytes, not 32` };
  const point = decode(bytes);
  if (point === undefined) return { ok: false, reason: "the public key is not a canonical encoding of a curve point" };
  // Small order: multiplying by the cofactor 8 gives the identity.
  let q: Point = point;
  for (let i = 0; i < 3; i++) q = add(q, q);
  if (q[0] === 0n && q[1] === 1n) return { ok: false, reason: "the public key is a point of small order" };
  return { ok: true };
}

function decode(bytes: Uint8Array): Point | undefined {
  let y = 0n;
  for (let i = 31; i >= 0; i--) y = (y << 8n) | BigInt(bytes[i] as number);
  const sign = y >> 255n;
  y &= (1n << 255n) - 1n;
  if (y >= p) return undefined;
  const y2 = mod(y * y);
  const u = mod(y2 - 1n);
  const v = mod(d * y2 + 1n);
  // x = sqrt(u / v), RFC 8032 section 5.1.3.
  let x = mod(u * power(v, 3n) * power(mod(u * power(v, 7n)), (p - 5n) / 8n));
  const vx2 = mod(v * x * x);
  if (vx2 === mod(-u)) x = mod(x * sqrtMinusOne);
  else if (vx2 !== u) return undefined;
  if (x === 0n && sign === 1n) return undefined;
  if ((x & 1n) !== sign) x = p - x;
  return [x, y];
}

/** Affine addition on -x^2 + y^2 = 1 + d x^2 y^2 (complete: it also doubles). */
function add([x1, y1]: Point, [x2, y2]: Point): Point {
  const t = mod(d * x1 * x2 * y1 * y2);
  return [mod((x1 * y2 + y1 * x2) * inverse(1n + t)), mod((y1 * y2 + x1 * x2) * inverse(1n - t))];
}

function mod(a: bigint): bigint {
  const r = a % p;
  return r < 0n ? r + p : r;
}

function power(base: bigint, exponent: bigint): bigint {
  let result = 1n;
  let b = mod(base);
  for (let e = exponent; e > 0n; e >>= 1n) {
    if (e & 1n) result = mod(result * b);
    b = mod(b * b);
  }
  return result;
}

function inverse(a: bigint): bigint {
  return power(a, p - 2n);
}
