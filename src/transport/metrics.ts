import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface Metrics {
  registry: Registry;
  /** Starts timing one RPC; call the result with the outcome code ("ok" or an error code). */
  startRpc(method: string, protocol: string): (code: string) => void;
  /** Counts one verify answer: "valid", or why not (invalid_token, token_expired, session_revoked, …). */
  countVerify(result: string): void;
}

/** The RPC metrics, in the registry every part of the service shares (services.ts). */
export function createMetrics(registry: Registry): Metrics {
  const rpcDuration = new Histogram({
    name: "sessions_rpc_duration_seconds",
    help: "Duration of SessionService RPCs by method, protocol and outcome code.",
    labelNames: ["method", "protocol", "code"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const verifies = new Counter({
    name: "sessions_verify_total",
    help: "VerifyToken answers (every protocol) by result: valid, or the reason it was not.",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const inFlight = new Gauge({
    name: "sessions_rpc_in_flight",
    help: "SessionService RPCs begun and not yet answered, by method and protocol.",
    labelNames: ["method", "protocol"] as const,
    registers: [registry],
  });
  return {
    registry,
    countVerify: (result) => verifies.inc({ result }),
    startRpc(method, protocol) {
      const end = rpcDuration.startTimer({ method, protocol });
      inFlight.inc({ method, protocol });
      return (code) => {
        inFlight.dec({ method, protocol });
        end({ code });
      };
    },
  };
}
