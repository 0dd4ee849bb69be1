import { setTimeout as sleep } from "node:timers/promises";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb.js";

export interface HealthOptions {
  /** How often a Watch call asks isServing() again. Default 5 s. */
  watchIntervalMs?: number;
  /** Services served on the same port outside this router (SessionService's own adapters). */
  alsoServing?: DescService[];
}

/**
 * Registers grpc.health.v1.Health. The server as a whole ("") and every service the router serves
 * share one status, from isServing(); a check that throws counts as NOT_SERVING.
 */
export function registerHealth(
  router: ConnectRouter,
  isServing: () => Promise<boolean> | boolean,
  { watchIntervalMs = 5_000, alsoServing = [] }: HealthOptions = {},
): void {
  // Read at call time: services registered on the router after this one count too.
  const known = () => ["", ...new Set([...alsoServing, ...router.handlers.map((h) => h.service)].map((s) => s.typeName))];
  const current = async () => {
    const ok = await Promise.resolve().then(isServing).catch(() => false);
    return ok ? Status.SERVING : Status.NOT_SERVING;
  };

  router.service(Health, {
    async check({ service }) {
      if (!known().includes(service)) throw new ConnectError(`unknown service "${service}"`, Code.NotFound);
      return { status: await current() };
    },
    // Per the health protocol an unknown service is no error here: it is reported, and the call stays open.
    async *watch({ service }, ctx) {
      let last: Status | undefined;
      while (!ctx.signal.aborted) {
        const status = known().includes(service) ? await current() : Status.SERVICE_UNKNOWN;
        if (status !== last) yield { status: (last = status) };
        await sleep(watchIntervalMs, undefined, { signal: ctx.signal }).catch(() => {});
      }
    },
    async list() {
      const status = await current();
      return { statuses: Object.fromEntries(known().map((name) => [name, { status }])) };
    },
  });
}
