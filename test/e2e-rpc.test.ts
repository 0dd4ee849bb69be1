import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { SessionService, SessionStatus, type CreateSessionResponse, type ListSessionsResponse, type VerifyTokenResponse } from "../gen/sessions/v1/sessions_pb.js";
import { callUnary, grpcClient } from "./helpers/grpc-client.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** The same RPCs over gRPC (@grpc/grpc-js), Connect, gRPC-Web, and buf curl via reflection. */

const run = promisify(execFile);
let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
});

describe("@grpc/grpc-js over h2c", () => {
  it("creates, lists and verifies with credentials in metadata", async () => {
    const client = grpcClient(SessionService, `127.0.0.1:${server.port}`);
    try {
      const md = server.tenant.headers;
      const created = await callUnary<CreateSessionResponse>(client, "createSession", { userId: "usr_grpc" }, md);
      expect(created.session?.id).toMatch(/^ses_/);
      const list = await callUnary<ListSessionsResponse>(client, "listSessions", { userId: "usr_grpc" }, md);
      expect(list.data.map((s) => s.id)).toEqual([created.session?.id]);
      expect(list.data[0]?.status).toBe(SessionStatus.ACTIVE);
      const verified = await callUnary<VerifyTokenResponse>(client, "verifyToken", { token: created.accessToken }, md);
      expect(verified).toMatchObject({ valid: true, sessionId: created.session?.id });
    } finally {
      client.close();
    }
  });

  it("reports errors as gRPC statuses carrying an ErrorInfo with our code", async () => {
    const client = grpcClient(SessionService, `127.0.0.1:${server.port}`);
    try {
      const err = (await callUnary(client, "getSession", { id: "ses_01HABCDEF999888" }, server.tenant.headers).catch((e: unknown) => e)) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.NOT_FOUND);
      const details = err.metadata.get("grpc-status-details-bin")[0] as Buffer;
      const status = fromBinary(StatusSchema, details);
      const info = anyUnpack(status.details[0]!, ErrorInfoSchema);
      expect(info?.reason).toBe("session_not_found");
      const unauth = (await callUnary(client, "listSessions", {}, { "x-tenant-id": server.tenant.id }).catch((e: unknown) => e)) as grpc.ServiceError;
      expect(unauth.code).toBe(grpc.status.UNAUTHENTICATED);
    } finally {
      client.close();
    }
  });

  it("serves grpc.health.v1 SERVING", async () => {
    const { stdout } = await run("npx", ["buf", "curl", "--protocol", "grpc", "--http2-prior-knowledge", `http://127.0.0.1:${server.port}/grpc.health.v1.Health/Check`]);
    expect(JSON.parse(stdout)).toEqual({ status: "SERVING" });
  });
});

describe("connect-es clients", () => {
  const transports = {
    "Connect (HTTP/1.1)": () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    "gRPC-Web (HTTP/1.1)": () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    "gRPC (h2c)": () => createGrpcTransport({ baseUrl: server.url }),
  };
  for (const [name, transport] of Object.entries(transports)) {
    it(`${name}: create then verify, and errors carry ErrorInfo`, async () => {
      const client = createClient(SessionService, transport());
      const headers = server.tenant.headers;
      const created = await client.createSession({ userId: `usr_${name}` }, { headers });
      const verified = await client.verifyToken({ token: created.accessToken }, { headers });
      expect(verified.valid).toBe(true);
      const err = await client.getSession({ id: "ses_01HABCDEF999888" }, { headers }).catch((e: unknown) => ConnectError.from(e));
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.NotFound);
      expect((err as ConnectError).findDetails(ErrorInfoSchema)[0]?.reason).toBe("session_not_found");
    });
  }
});

describe("buf curl via reflection", () => {
  const auth = () => ["-H", `authorization: ${server.tenant.headers.authorization}`, "-H", `x-tenant-id: ${server.tenant.id}`];

  it("lists the service's methods over gRPC reflection", async () => {
    const { stdout } = await run("npx", ["buf", "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", `http://127.0.0.1:${server.port}`]);
    for (const m of ["ListSessions", "GetSession", "RevokeSession", "RevokeSessions", "VerifyToken", "CreateSession", "RefreshSession"]) {
      expect(stdout).toContain(`sessions.v1.SessionService/${m}`);
    }
  });

  it.each([
    ["grpc", ["--protocol", "grpc", "--http2-prior-knowledge"]],
    ["connect", ["--protocol", "connect"]],
    ["grpcweb", ["--protocol", "grpcweb"]],
  ])("calls CreateSession and ListSessions over %s", async (_name, protocol) => {
    const base = `http://127.0.0.1:${server.port}/sessions.v1.SessionService`;
    // The schema comes from reflection, which buf curl always asks for over gRPC-compatible HTTP/2 or HTTP/1.1.
    const created = await run("npx", ["buf", "curl", ...protocol, ...auth(), "-d", '{"user_id": "usr_bufcurl"}', `${base}/CreateSession`]);
    const session = JSON.parse(created.stdout).session as { id: string };
    const listed = await run("npx", ["buf", "curl", ...protocol, ...auth(), "-d", '{"user_id": "usr_bufcurl"}', `${base}/ListSessions`]);
    expect(JSON.parse(listed.stdout).data.map((s: { id: string }) => s.id)).toContain(session.id);
  });
});
