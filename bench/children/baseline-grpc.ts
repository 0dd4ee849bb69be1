import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { createLocalJWKSet, jwtVerify } from "jose";
import mysql from "mysql2/promise";
import {
  GetSessionRequestSchema,
  GetSessionResponseSchema,
  VerifyTokenRequestSchema,
  VerifyTokenResponseSchema,
} from "../../gen/sessions/v1/sessions_pb.js";

/**
 * The gRPC baselines: a bare @grpc/grpc-js server with protobuf-es (de)serialization doing only
 * the work itself: VerifyToken is one jose EdDSA verification (JWKS in memory), GetSession one
 * primary-key SELECT through a mysql2 pool of the service's size. No auth, no framework, no pipeline.
 */
const jwks = createLocalJWKSet((await (await fetch(process.env.JWKS_URL as string)).json()) as never);
const pool = mysql.createPool({ uri: process.env.DATABASE_URL as string, connectionLimit: 16 });
const tenantId = process.env.TENANT_ID as string;

const unary = <I, O>(input: Parameters<typeof fromBinary>[0], output: Parameters<typeof toBinary>[0], path: string) => ({
  path,
  requestStream: false,
  responseStream: false,
  requestDeserialize: (b: Buffer) => fromBinary(input, b) as I,
  requestSerialize: () => Buffer.alloc(0),
  responseSerialize: (m: O) => Buffer.from(toBinary(output, m as never)),
  responseDeserialize: () => undefined as O,
});

const server = new grpc.Server();
server.addService(
  {
    verifyToken: unary(VerifyTokenRequestSchema, VerifyTokenResponseSchema, "/sessions.v1.SessionService/VerifyToken"),
    getSession: unary(GetSessionRequestSchema, GetSessionResponseSchema, "/sessions.v1.SessionService/GetSession"),
  },
  {
    verifyToken: (call: grpc.ServerUnaryCall<{ token: string }, unknown>, done: grpc.sendUnaryData<unknown>) => {
      jwtVerify(call.request.token, jwks, { algorithms: ["EdDSA"], typ: "at+jwt" }).then(
        ({ payload }) => done(null, create(VerifyTokenResponseSchema, { valid: true, sessionId: payload.sid as string })),
        () => done(null, create(VerifyTokenResponseSchema, { valid: false })),
      );
    },
    getSession: (call: grpc.ServerUnaryCall<{ id: string }, unknown>, done: grpc.sendUnaryData<unknown>) => {
      pool.query("SELECT id, user_id, created_at FROM sessions WHERE tenant_id = ? AND id = ?", [tenantId, call.request.id]).then(
        ([rows]) => {
          const row = (rows as { id: Buffer; user_id: Buffer; created_at: Date }[])[0];
          done(null, create(GetSessionResponseSchema, row ? { session: { id: String(row.id), userId: String(row.user_id), createdAt: timestampFromDate(row.created_at) } } : {}));
        },
        (err: Error) => done({ code: grpc.status.UNAVAILABLE, message: err.message }),
      );
    },
  },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.send?.({ port });
});
