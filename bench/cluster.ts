import type autocannon from "autocannon";
import mysql from "mysql2/promise";
import { startGaleraCluster } from "../test/cluster/helpers/galera.js";
import { createCheckUser, startHaProxy } from "../test/cluster/helpers/haproxy.js";
import type { LoadResult } from "./grpc-load.js";
import type { Row } from "./report.js";
import type { Service } from "./run.js";
import { seedTenant } from "./seed.js";

/**
 * `npm run bench -- --cluster`: what a Galera cluster costs. A private three-node MariaDB Galera
 * cluster on this machine (test/cluster/helpers/galera.ts, removed afterwards) behind HAProxy as the
 * README deploys it (one writer node, two backups), the service on it, and the same load on the
 * service on the single server in the same run: verify (one causal read per call, wsrep_sync_wait)
 * and refresh (a read and a certified write), printed as cluster/single ratios.
 *
 * The three nodes share this machine's two cores with the service and the load, and every commit
 * is certified by all three: a lower bound for a cluster of three machines, where each node has
 * cores of its own and the price is a network round trip per commit instead.
 */
export interface ClusterOptions {
  isWanted: (name: string) => boolean;
  httpLoad: (opts: autocannon.Options, overrides?: Partial<autocannon.Options>) => Promise<LoadResult>;
  startService: (env: Record<string, string>) => Promise<Service>;
  compare: (name: string, goal: string, goalRatio: number | undefined, service: () => Promise<LoadResult>, baseline: () => Promise<LoadResult>, baselineName: string) => Promise<Row>;
  createSessions: (base: string, headers: Record<string, string>, count: number, userOf: (i: number) => string) => Promise<{ access_token: string; refresh_token: string }[]>;
  refreshRequests: (tenantId: string, live: string[]) => autocannon.Options;
  keyEncryptionKey: string;
  issuer: string;
  /** The service on the single server, with its tenant and sessions no other row refreshes. */
  single: { url: string; tenantId: string; headers: Record<string, string>; sessions: { access_token: string; refresh_token: string }[] };
}

const database = "sessions_bench_cluster";

export async function runCluster(o: ClusterOptions): Promise<Row[]> {
  const rows: Row[] = [];
  if (!["cluster verify", "cluster refresh"].some(o.isWanted)) return rows;
  const cluster = await startGaleraCluster();
  let service: Service | undefined;
  let close = async () => undefined as unknown;
  try {
    const admin = await mysql.createConnection({ host: "127.0.0.1", port: cluster.nodes[0]!.port, user: "root" });
    await admin.query(createCheckUser);
    await admin.end();
    const haproxy = await startHaProxy(cluster.nodes);
    close = () => haproxy.close();
    const databaseUrl = `${haproxy.url}/${database}`;
    const { tenantId, secret } = await seedTenant(databaseUrl, "bench-cluster");
    const headers = { authorization: `Bearer ${secret}`, "x-tenant-id": tenantId, "content-type": "application/json" };
    service = await o.startService({ DATABASE_URL: databaseUrl, KEY_ENCRYPTION_KEY: o.keyEncryptionKey, ISSUER: o.issuer });
    const sessions = await o.createSessions(service.url, headers, o.single.sessions.length, (i) => `usr_${i % 2_000}`);
    const verifyOn = (url: string, h: Record<string, string>, tokens: string[]): autocannon.Options => {
      const bodies = tokens.map((token) => JSON.stringify({ token }));
      let next = 0;
      return { url: `${url}/v1/sessions/verify`, requests: [{ method: "POST", headers: h, setupRequest: (req) => ({ ...req, body: bodies[next++ % bodies.length] }) }] };
    };
    const baselineName = "the service on the single server";
    if (o.isWanted("cluster verify")) {
      const onCluster = verifyOn(service.url, headers, sessions.map((s) => s.access_token));
      const onSingle = verifyOn(o.single.url, o.single.headers, o.single.sessions.map((s) => s.access_token));
      rows.push(await o.compare("cluster verify (3 Galera nodes, HAProxy)", "cost", undefined, () => o.httpLoad(onCluster), () => o.httpLoad(onSingle), baselineName));
    }
    if (o.isWanted("cluster refresh")) {
      const clusterLive = sessions.map((s) => s.refresh_token);
      const singleLive = o.single.sessions.map((s) => s.refresh_token);
      rows.push(
        await o.compare(
          "cluster refresh (3 Galera nodes, HAProxy)",
          "cost",
          undefined,
          () => o.httpLoad({ ...o.refreshRequests(tenantId, clusterLive), url: `${service!.url}/v1/auth/token/refresh` }),
          () => o.httpLoad({ ...o.refreshRequests(o.single.tenantId, singleLive), url: `${o.single.url}/v1/auth/token/refresh` }),
          baselineName,
        ),
      );
    }
  } finally {
    service?.child.kill();
    await close();
    await cluster.destroy();
  }
  return rows;
}
