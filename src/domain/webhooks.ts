import { lookup } from "node:dns/promises";
import { BlockList, isIP } from "node:net";
import { randomBytes } from "node:crypto";
import { AppError } from "./errors.js";
import { isSessionEventType, sessionEventTypes, type SessionEventType } from "./events.js";

/**
 * Webhooks: the event log delivered to a tenant's HTTPS endpoint per the Standard Webhooks
 * specification. This module holds the rules (what an endpoint may be, which events it gets, when a
 * failed delivery is tried again, when an endpoint is given up on); src/store/webhook-store.ts
 * keeps endpoints and deliveries, src/workers/webhook-dispatcher.ts sends them.
 */

export interface WebhookEndpoint {
  id: string;
  tenantId: string;
  url: string;
  /** The event types it receives; empty: every type. */
  eventTypes: SessionEventType[];
  isEnabled: boolean;
  /** Why it was disabled (persistent failure), while it is. */
  disabledReason: string | null;
  /** Every event of the log through this seq has been queued for it (or was not for it). */
  position: number;
  createdAt: Date;
}

/** An endpoint's signing secrets: the current one, and the one it replaced while that is still honoured. */
export interface WebhookSecrets {
  current: string;
  previous: { secret: string; until: Date } | null;
}

/** After rotate-secret, messages are signed with both secrets for this long, so receivers can switch without losing any. */
export const previousSecretGraceSeconds = 24 * 60 * 60;

/** A new signing secret in the Standard Webhooks form: `whsec_` and base64 of 24 random bytes. */
export function newWebhookSecret(): string {
  return `whsec_${randomBytes(24).toString("base64")}`;
}

/** `session.revoked,session.ended` → the types; absent: every type. Empty and unknown names are refused. */
export function parseEventTypes(text: string | undefined): SessionEventType[] {
  if (text === undefined) return [];
  if (text.trim() === "") throw new AppError("invalid_request", "name at least one event type, or leave the filter out for every type", "events");
  const types = text.split(",").map((t) => t.trim());
  for (const t of types) {
    if (!isSessionEventType(t)) throw new AppError("invalid_request", `unknown event type ${JSON.stringify(t)}; the types are ${sessionEventTypes.join(", ")}`, "events");
  }
  return [...new Set(types as SessionEventType[])];
}

export function wantsEvent(endpoint: Pick<WebhookEndpoint, "eventTypes">, type: SessionEventType): boolean {
  return endpoint.eventTypes.length === 0 || endpoint.eventTypes.includes(type);
}

const maxUrlLength = 2048;

/**
 * A webhook URL as registered: http or https, a host, no credentials, no fragment. Whether its
 * host may be reached is decided when it resolves (isBlockedAddress), at registration and again at
 * every connection.
 */
export function checkWebhookUrl(text: string): URL {
  const invalid = (why: string) => new AppError("invalid_request", `the webhook URL ${why}`, "url");
  if (text.length > maxUrlLength) throw invalid(`is longer than ${maxUrlLength} characters`);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw invalid("is not an absolute URL");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw invalid("must be http or https");
  if (url.username !== "" || url.password !== "") throw invalid("must not carry credentials");
  if (url.hash !== "") throw invalid("must not have a fragment");
  if (url.hostname === "") throw invalid("has no host");
  return url;
}

/**
 * Addresses a webhook may not reach unless the operator allows private targets
 * (WEBHOOK_ALLOW_PRIVATE=true): loopback, private, link-local (cloud metadata lives there),
 * carrier-grade NAT, unspecified, multicast, reserved and documentation ranges, in IPv4 and IPv6.
 */
const blocked = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.0.2.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  blocked.addSubnet(net, prefix, "ipv4");
}
for (const [net, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["64:ff9b:1::", 48],
  ["100::", 64],
  ["2001:db8::", 32],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
] as const) {
  blocked.addSubnet(net, prefix, "ipv6");
}

/** Whether a resolved address is one webhooks may not reach by default. Not an IP at all: blocked. */
export function isBlockedAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return blocked.check(address, "ipv4");
  if (family !== 6) return true;
  if (blocked.check(address, "ipv6")) return true;
  // IPv6 forms that carry an IPv4 address are judged by it too: mapped (::ffff:0:0/96), compatible
  // (::/96), NAT64 (64:ff9b::/96) and 6to4 (2002::/16, the address in the next 32 bits).
  const h = hextets(address);
  if (h === undefined) return true;
  const v4 = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const isZero = (from: number, to: number) => h.slice(from, to).every((x) => x === 0);
  if (isZero(0, 5) && (h[5] === 0xffff || h[5] === 0)) return blocked.check(v4(h[6]!, h[7]!), "ipv4");
  if (h[0] === 0x64 && h[1] === 0xff9b && isZero(2, 6)) return blocked.check(v4(h[6]!, h[7]!), "ipv4");
  if (h[0] === 0x2002) return blocked.check(v4(h[1]!, h[2]!), "ipv4");
  return false;
}

/** The eight 16-bit groups of an IPv6 address (a trailing dotted IPv4 part included); undefined if malformed. */
function hextets(address: string): number[] | undefined {
  let text = address.toLowerCase();
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail, ...rest] = text.split("::");
  if (rest.length > 0) return undefined;
  const left = head === "" ? [] : head.split(":");
  const right = tail === undefined || tail === "" ? [] : tail.split(":");
  const missing = 8 - left.length - right.length;
  if (tail === undefined ? missing !== 0 : missing < 0) return undefined;
  const groups = [...left, ...Array<string>(tail === undefined ? 0 : missing).fill("0"), ...right].map((g) => parseInt(g, 16));
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}

/**
 * Refuses, at registration, a URL whose host is (or resolves only to) an address webhooks may not
 * reach; deliveries check again at every connection (a name can resolve elsewhere later).
 */
export async function checkWebhookTarget(url: URL, allowPrivate: boolean): Promise<void> {
  if (allowPrivate) return;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  let addresses: string[];
  try {
    addresses = isIP(host) !== 0 ? [host] : (await lookup(host, { all: true })).map((a) => a.address);
  } catch {
    throw new AppError("invalid_request", `the webhook host ${host} does not resolve`, "url");
  }
  if (addresses.every(isBlockedAddress)) {
    throw new AppError("invalid_request", `the webhook host ${host} is a private or reserved address; set WEBHOOK_ALLOW_PRIVATE=true to allow it`, "url");
  }
}

/**
 * When a failed delivery is tried again, after the attempt that failed (the first attempt comes at
 * once): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — 8 attempts over 27 h 35 min, the schedule the
 * Standard Webhooks guidance suggests. A delivery that fails them all is given up, and so is its endpoint.
 */
export const retryDelaysSeconds = [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600] as const;

/** When to try again after `attemptsMade` failed attempts; null when the schedule is spent. */
export function nextAttemptAt(attemptsMade: number, now: Date): Date | null {
  const delay = retryDelaysSeconds[attemptsMade - 1];
  return delay === undefined ? null : new Date(now.getTime() + delay * 1000);
}

/** Why an endpoint was disabled: a delivery failed every attempt for over a day. */
export const persistentFailureReason = "a delivery failed every attempt for more than 24 hours";

/** How long one attempt may take before it counts as failed. */
export const attemptTimeoutMs = 10_000;
