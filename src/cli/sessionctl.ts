import { readFileSync } from "node:fs";
import { Command, Option } from "commander";
import { loadConfig, type Config } from "../config.js";
import { mintApiKey } from "../domain/api-keys.js";
import { AppError } from "../domain/errors.js";
import { systemClock, wholeSeconds } from "../domain/clock.js";
import type { SessionPolicy, Tenant } from "../domain/model.js";
import { defaultPolicy, validatePolicy } from "../domain/policy.js";
import { purge, retentionCutoff } from "../domain/sweep.js";
import { checkSigningKey, isPublished, pickSigningKey, revokeSigningKey, rotateSigningKey } from "../domain/signing-keys.js";
import { idPatterns, newId } from "../domain/secrets.js";
import { openDatabase, type Pool } from "../store/db.js";
import { migrate } from "../store/migrate.js";
import { createSweepStore } from "../store/sweep-store.js";
import { createPolicyStore } from "../store/policy-store.js";
import { createSigningKeyStore } from "../store/signing-key-store.js";
import { createTenantStore } from "../store/tenant-store.js";
import { createEventStore } from "../store/event-store.js";
import { createWebhookStore } from "../store/webhook-store.js";
import { seal } from "../domain/secrets.js";
import { checkWebhookTarget, checkWebhookUrl, newWebhookSecret, parseEventTypes, previousSecretGraceSeconds, type WebhookEndpoint } from "../domain/webhooks.js";

/** The admin CLI. It reads DATABASE_URL like the server and migrates the same way before it acts. */

/** Instants the CLI records and prints are whole seconds, as every instant the API shows. */
const now = () => wholeSeconds(systemClock.now());
/** RFC 3339 UTC at the whole second, as the API prints instants. */
const iso = (date: Date) => wholeSeconds(date).toISOString().replace(".000Z", "Z");

async function withDatabase<T>(work: (pool: Pool, config: Config) => Promise<T>): Promise<T> {
  const config = loadConfig();
  try {
    const pool = await openDatabase({ url: config.databaseUrl, poolSize: 2 });
    try {
      await migrate(pool);
      return await work(pool, config);
    } finally {
      await pool.end();
    }
  } catch (err) {
    throw err instanceof AppError && err.code === "unavailable" ? unreachable(config.databaseUrl, err) : err;
  }
}

/**
 * The server's `unavailable` says "try again" to an API client; an operator also needs to know
 * where the CLI tried (a wrong host or port in DATABASE_URL looks the same): the host and port, and
 * the driver's error code, never the user or password.
 */
function unreachable(databaseUrl: string, err: AppError): Error {
  const { hostname, port } = new URL(databaseUrl);
  const code = (err.cause as { code?: unknown } | undefined)?.code;
  const why = typeof code === "string" && /^[A-Z_]{1,64}$/.test(code) ? ` (${code})` : "";
  return new Error(`cannot reach the database at ${hostname}:${port || 3306}${why}; check DATABASE_URL, or try again`);
}

function print(asJson: boolean, value: object, lines: string[]): void {
  console.log(asJson ? JSON.stringify(value) : lines.join("\n"));
}

async function requireTenant(pool: Pool, tenantId: string): Promise<void> {
  if ((await createTenantStore(pool).getTenant(tenantId)) === null) throw new Error(`no tenant ${tenantId}`);
}

function tenantIdArg(value: string): string {
  if (!idPatterns.tenant.test(value)) throw new Error(`--tenant: ${JSON.stringify(value)} is not a tenant id (tnt_ and a 26-character ULID)`);
  return value;
}

const json = new Option("--json", "print one JSON object");
const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
const program = new Command("sessionctl")
  .version(version)
  .description(
    "Administer the session service: tenants, secret keys, policies, signing keys and webhooks.\n" +
      "Reads DATABASE_URL (default mysql://root@127.0.0.1:3306/sessions) and KEY_ENCRYPTION_KEY as the server does, and migrates the database first.",
  );

const tenants = program.command("tenants").description("manage tenants");
tenants
  .command("create")
  .description("create a tenant and its first secret key (shown once)")
  .requiredOption("--name <name>", "the tenant's display name")
  .addOption(json)
  .action(async (opts: { name: string; json?: boolean }) => {
    const name = opts.name.trim();
    if (name === "" || name.length > 200) throw new Error("--name must be 1 to 200 characters");
    await withDatabase(async (pool) => {
      const store = createTenantStore(pool);
      const at = now();
      const tenant: Tenant = { id: newId("tnt"), name, createdAt: at };
      await store.createTenant(tenant);
      const { key, secret, hash } = mintApiKey(tenant.id, at);
      await store.createApiKey(key, hash);
      print(
        opts.json === true,
        { tenant_id: tenant.id, name: tenant.name, key_id: key.id, secret_key: secret, created_at: iso(at) },
        [`tenant_id:  ${tenant.id}`, `name:       ${tenant.name}`, `key_id:     ${key.id}`, `secret_key: ${secret}`, "(the secret key is shown only once)"],
      );
    });
  });
tenants
  .command("list")
  .description("list tenants")
  .addOption(json)
  .action(async (opts: { json?: boolean }) => {
    await withDatabase(async (pool) => {
      const rows = await createTenantStore(pool).listTenants();
      const data = rows.map((t) => ({ tenant_id: t.id, name: t.name, created_at: iso(t.createdAt) }));
      print(opts.json === true, { data }, data.map((t) => `${t.tenant_id}  ${t.created_at}  ${t.name}`));
    });
  });

const keys = program.command("keys").description("manage a tenant's secret keys");
keys
  .command("create")
  .description("create a secret key (shown once)")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .option("--test", "make an sk_test_ key instead of sk_live_")
  .addOption(json)
  .action(async (opts: { tenant: string; test?: boolean; json?: boolean }) => {
    await withDatabase(async (pool) => {
      await requireTenant(pool, opts.tenant);
      const { key, secret, hash } = mintApiKey(opts.tenant, now(), opts.test ? "test" : "live");
      await createTenantStore(pool).createApiKey(key, hash);
      print(opts.json === true, { tenant_id: key.tenantId, key_id: key.id, secret_key: secret }, [
        `key_id:     ${key.id}`,
        `secret_key: ${secret}`,
        "(the secret key is shown only once)",
      ]);
    });
  });
keys
  .command("list")
  .description("list a tenant's keys (hints only; secrets are never stored)")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .addOption(json)
  .action(async (opts: { tenant: string; json?: boolean }) => {
    await withDatabase(async (pool) => {
      await requireTenant(pool, opts.tenant);
      const rows = await createTenantStore(pool).listApiKeys(opts.tenant);
      const data = rows.map((k) => ({
        key_id: k.id,
        hint: k.hint,
        created_at: iso(k.createdAt),
        revoked_at: (k.revokedAt ? iso(k.revokedAt) : null),
      }));
      print(opts.json === true, { data }, data.map((k) => `${k.key_id}  ${k.hint}  ${k.created_at}  ${k.revoked_at ?? "active"}`));
    });
  });
keys
  .command("revoke")
  .description("revoke a key; every instance stops accepting it within API_KEY_CACHE_SECONDS")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .requiredOption("--key <key_id>", "the key id (key_…)")
  .addOption(json)
  .action(async (opts: { tenant: string; key: string; json?: boolean }) => {
    await withDatabase(async (pool) => {
      await requireTenant(pool, opts.tenant);
      const isRevoked = await createTenantStore(pool).revokeApiKey(opts.tenant, opts.key, now());
      if (!isRevoked) throw new Error(`no key ${opts.key} for tenant ${opts.tenant}`);
      print(opts.json === true, { key_id: opts.key, revoked: true }, [`revoked ${opts.key}`]);
    });
  });

const policyOptions = {
  accessTokenTtlSeconds: ["--access-token-ttl <seconds>", "access-token lifetime"],
  sessionLifetimeSeconds: ["--session-lifetime <seconds>", "absolute session lifetime (refresh never extends it)"],
  idleTimeoutSeconds: ["--idle-timeout <seconds|off>", "end sessions not refreshed for this long"],
  refreshGraceSeconds: ["--refresh-grace <seconds>", "how long a rotated refresh token may be retried"],
  maxSessionsPerUser: ["--max-sessions-per-user <n|off>", "cap on active sessions per user; the oldest is revoked"],
} as const satisfies Record<keyof SessionPolicy, readonly [string, string]>;

function printPolicy(asJson: boolean, p: SessionPolicy): void {
  const shown = {
    access_token_ttl_seconds: p.accessTokenTtlSeconds,
    session_lifetime_seconds: p.sessionLifetimeSeconds,
    idle_timeout_seconds: p.idleTimeoutSeconds,
    refresh_grace_seconds: p.refreshGraceSeconds,
    max_sessions_per_user: p.maxSessionsPerUser,
  };
  print(asJson, shown, Object.entries(shown).map(([k, v]) => `${k}: ${v ?? "off"}`));
}

const policy = program.command("policy").description("a tenant's session policy");
policy
  .command("get")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .addOption(json)
  .action(async (opts: { tenant: string; json?: boolean }) => {
    await withDatabase(async (pool) => {
      await requireTenant(pool, opts.tenant);
      printPolicy(opts.json === true, (await createPolicyStore(pool).getPolicy(opts.tenant)) ?? defaultPolicy);
    });
  });
const policySet = policy
  .command("set")
  .description("change some knobs; the others keep their current values (policy changes reach every instance within API_KEY_CACHE_SECONDS)")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .addOption(json);
const policyAttributes = Object.entries(policyOptions).map(([key, [flag, help]]) => {
  const option = new Option(flag, help);
  policySet.addOption(option);
  return [key as keyof SessionPolicy, option.attributeName()] as const;
});
policySet.action(async (opts: Record<string, string | boolean | undefined> & { tenant: string }) => {
  await withDatabase(async (pool) => {
    const store = createPolicyStore(pool);
    await requireTenant(pool, opts.tenant);
    const next: SessionPolicy = { ...((await store.getPolicy(opts.tenant)) ?? defaultPolicy) };
    for (const [key, attribute] of policyAttributes) {
      const raw = opts[attribute];
      if (typeof raw !== "string") continue;
      // Digits only: Number() would also read "1e2", "0x10" or " 5" as integers.
      (next as unknown as Record<string, number | null>)[key] = raw === "off" ? null : /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
    }
    try {
      validatePolicy(next);
    } catch (err) {
      // Name the flag the operator typed, not the field it sets.
      const spec = err instanceof AppError && err.field !== undefined ? policyOptions[err.field as keyof SessionPolicy]?.[0] : undefined;
      if (spec === undefined) throw err;
      // The knobs that take `off` (<seconds|off>) say so: the range alone reads as the only choice.
      const orOff = spec.endsWith("|off>") ? ", or off" : "";
      throw new Error(`${(err as AppError).message.replace((err as AppError).field as string, spec.split(" ")[0] as string)}${orOff}`);
    }
    await store.putPolicy(opts.tenant, next, now());
    printPolicy(opts.json === true, next);
  });
});

const signingKeys = program.command("signing-keys").description("the service's token signing keys");
signingKeys
  .command("list")
  .addOption(json)
  .action(async (opts: { json?: boolean }) => {
    await withDatabase(async (pool, config) => {
      const at = now();
      const keys = await createSigningKeyStore(pool).listSigningKeys();
      const problems = new Map(keys.map((k) => [k.id, checkSigningKey(config.keyEncryptionKey, k)?.reason ?? null]));
      const signer = pickSigningKey(keys.filter((k) => problems.get(k.id) === null), at);
      const data = keys.map((k) => ({
        kid: k.id,
        created_at: iso(k.createdAt),
        signs_from: iso(k.signsFrom),
        retired_at: (k.retiredAt ? iso(k.retiredAt) : null),
        revoked_at: (k.revokedAt ? iso(k.revokedAt) : null),
        is_published: problems.get(k.id) === null && isPublished(k, at),
        is_signing: k.id === signer?.id,
        problem: problems.get(k.id) ?? null,
      }));
      print(
        opts.json === true,
        { data },
        data.map((k) => `${k.kid}  signs from ${k.signs_from}  ${k.is_signing ? "SIGNING" : k.is_published ? "published" : "withdrawn"}${k.revoked_at ? "  revoked" : ""}${k.problem ? `  INVALID: ${k.problem}` : ""}`),
      );
    });
  });
signingKeys
  .command("rotate")
  .description("publish a new key now; it starts signing after the rotation lead time, when the current key retires")
  .addOption(json)
  .action(async (opts: { json?: boolean }) => {
    await withDatabase(async (pool, config) => {
      const { key, isNew } = await rotateSigningKey(createSigningKeyStore(pool), config.keyEncryptionKey, now());
      const out = { kid: key.id, signs_from: iso(key.signsFrom), created: isNew };
      print(opts.json === true, out, [`${isNew ? "scheduled" : "already scheduled"} ${key.id}: signs from ${out.signs_from}`]);
    });
  });
signingKeys
  .command("revoke")
  .description("emergency: withdraw a key at once; its tokens stop verifying on every instance within seconds")
  .requiredOption("--kid <kid>", "the key id (key_…)")
  .addOption(json)
  .action(async (opts: { kid: string; json?: boolean }) => {
    await withDatabase(async (pool, config) => {
      const isRevoked = await revokeSigningKey(createSigningKeyStore(pool), config.keyEncryptionKey, opts.kid, now());
      if (!isRevoked) throw new Error(`no active signing key ${opts.kid}`);
      print(opts.json === true, { kid: opts.kid, revoked: true }, [`revoked ${opts.kid}`]);
    });
  });

const webhooks = program.command("webhooks").description("a tenant's webhook endpoints (Standard Webhooks)");
const endpointView = (e: WebhookEndpoint) => ({
  webhook_id: e.id,
  url: e.url,
  events: e.eventTypes.length === 0 ? ["*"] : e.eventTypes,
  enabled: e.isEnabled,
  disabled_reason: e.disabledReason,
  created_at: iso(e.createdAt),
});
webhooks
  .command("create")
  .description("register an endpoint; prints its signing secret (whsec_…) once")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .requiredOption("--url <url>", "where to POST events (http or https; private addresses need WEBHOOK_ALLOW_PRIVATE=true)")
  .option("--events <types>", "comma-separated event types to send (default: all)")
  .addOption(json)
  .action(async (opts: { tenant: string; url: string; events?: string; json?: boolean }) => {
    const url = checkWebhookUrl(opts.url);
    const eventTypes = parseEventTypes(opts.events);
    await withDatabase(async (pool, config) => {
      await requireTenant(pool, opts.tenant);
      await checkWebhookTarget(url, config.webhookAllowPrivate);
      const secret = newWebhookSecret();
      // From the events committed after now: numbered later, so after the current head.
      const endpoint: WebhookEndpoint = {
        id: newId("whk"),
        tenantId: opts.tenant,
        url: url.href,
        eventTypes,
        isEnabled: true,
        disabledReason: null,
        position: await createEventStore(pool).headSeq(),
        createdAt: now(),
      };
      await createWebhookStore(pool).createEndpoint(endpoint, seal(config.keyEncryptionKey, endpoint.id, Buffer.from(secret)));
      const view = { ...endpointView(endpoint), secret };
      print(opts.json === true, view, [`webhook_id: ${view.webhook_id}`, `url:        ${view.url}`, `events:     ${view.events.join(",")}`, `secret:     ${secret}`, "(the secret is shown only once)"]);
    });
  });
webhooks
  .command("list")
  .description("a tenant's endpoints, with their deliveries pending, delivered and given up")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .addOption(json)
  .action(async (opts: { tenant: string; json?: boolean }) => {
    await withDatabase(async (pool) => {
      await requireTenant(pool, opts.tenant);
      const data = (await createWebhookStore(pool).listEndpoints(opts.tenant)).map((e) => ({
        ...endpointView(e),
        deliveries: { pending: e.pending, delivered: e.delivered, failed: e.failed },
      }));
      print(
        opts.json === true,
        { data },
        data.map((e) => `${e.webhook_id}  ${e.enabled ? "enabled " : "DISABLED"}  ${e.url}  events=${e.events.join(",")}  pending=${e.deliveries.pending} delivered=${e.deliveries.delivered} failed=${e.deliveries.failed}${e.disabled_reason ? `  (${e.disabled_reason})` : ""}`),
      );
    });
  });
webhooks
  .command("attempts")
  .description("an endpoint's latest delivery attempts")
  .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
  .requiredOption("--id <webhook_id>", "the endpoint (whk_…)")
  .option("--limit <n>", "how many", "20")
  .addOption(json)
  .action(async (opts: { tenant: string; id: string; limit: string; json?: boolean }) => {
    const limit = Number(opts.limit);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 1000) throw new Error("--limit must be an integer from 1 to 1000");
    await withDatabase(async (pool) => {
      await requireTenant(pool, opts.tenant);
      const store = createWebhookStore(pool);
      if (!(await store.listEndpoints(opts.tenant)).some((e) => e.id === opts.id)) throw new Error(`no webhook ${opts.id} for tenant ${opts.tenant}`);
      const data = (await store.listAttempts(opts.tenant, opts.id, limit)).map((a) => ({
        attempted_at: a.attemptedAt.toISOString(),
        status: a.status,
        error: a.error,
        duration_ms: Math.round(a.durationMs),
      }));
      print(opts.json === true, { data }, data.map((a) => `${a.attempted_at}  ${a.status ?? "---"}  ${a.duration_ms} ms${a.error ? `  ${a.error}` : ""}`));
    });
  });
for (const [name, description] of [
  ["enable", "turn an endpoint back on (after persistent failure): what it missed, still within EVENT_RETENTION_DAYS, is delivered"],
  ["disable", "stop deliveries to an endpoint until it is enabled again"],
  ["delete", "remove an endpoint, its pending deliveries and its attempts"],
  ["rotate-secret", `a new signing secret (printed once); the old one also signs for ${previousSecretGraceSeconds / 3600} h`],
] as const) {
  webhooks
    .command(name)
    .description(description)
    .requiredOption("--tenant <tenant_id>", "the tenant", tenantIdArg)
    .requiredOption("--id <webhook_id>", "the endpoint (whk_…)")
    .addOption(json)
    .action(async (opts: { tenant: string; id: string; json?: boolean }) => {
      await withDatabase(async (pool, config) => {
        await requireTenant(pool, opts.tenant);
        const store = createWebhookStore(pool);
        let secret: string | undefined;
        let isFound: boolean;
        if (name === "delete") isFound = await store.deleteEndpoint(opts.tenant, opts.id);
        else if (name === "rotate-secret") {
          secret = newWebhookSecret();
          const until = new Date(now().getTime() + previousSecretGraceSeconds * 1000);
          isFound = await store.rotateSecret(opts.tenant, opts.id, seal(config.keyEncryptionKey, opts.id, Buffer.from(secret)), until);
        } else isFound = await store.setEnabled(opts.tenant, opts.id, name === "enable", name === "disable" ? "disabled by an operator" : null);
        if (!isFound) throw new Error(`no webhook ${opts.id} for tenant ${opts.tenant}`);
        const out = { webhook_id: opts.id, [name === "rotate-secret" ? "secret" : name === "delete" ? "deleted" : "enabled"]: secret ?? (name === "delete" ? true : name === "enable") };
        print(opts.json === true, out, secret ? [`secret: ${secret}`, "(the secret is shown only once; the previous one also signs for 24 h)"] : [`${name}d ${opts.id}`]);
      });
    });
}

program
  .command("purge")
  .description("delete ended sessions and rotated refresh tokens older than RETENTION_DAYS (default 30), as the background sweep does")
  .option("--dry-run", "print what would be deleted, delete nothing")
  .addOption(json)
  .action(async (opts: { dryRun?: boolean; json?: boolean }) => {
    await withDatabase(async (pool, config) => {
      const cutoff = retentionCutoff(now(), config.retentionDays);
      const report = await purge(createSweepStore(pool), cutoff, { dryRun: opts.dryRun === true });
      const verb = opts.dryRun ? "would delete" : "deleted";
      const shown = {
        dry_run: opts.dryRun === true,
        cutoff: iso(report.cutoff),
        sessions: report.total.sessions,
        refresh_tokens: report.total.refreshTokens,
        tenants: report.tenants.map((t) => ({ tenant_id: t.tenantId, sessions: t.sessions, refresh_tokens: t.refreshTokens })),
      };
      print(opts.json === true, shown, [
        `${verb} ${shown.sessions} sessions and ${shown.refresh_tokens} refresh tokens that ended before ${shown.cutoff}`,
        ...shown.tenants.map((t) => `  ${t.tenant_id}  sessions ${t.sessions}  refresh tokens ${t.refresh_tokens}`),
      ]);
    });
  });

program
  .command("migrate")
  .description("create the database if needed and apply migrations")
  .action(async () => {
    await withDatabase(async () => undefined);
    console.log("migrations applied");
  });

program.parseAsync().catch((err: unknown) => {
  console.error(`sessionctl: ${(err as Error).message}`);
  process.exit(1);
});
