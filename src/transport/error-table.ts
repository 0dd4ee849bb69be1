import { Code } from "@connectrpc/connect";
import type { ErrorCode } from "../domain/errors.js";

/**
 * The one table from our error codes to Connect/gRPC codes and HTTP statuses. A module of its own
 * that imports nothing generated, so that tools/protoc-gen-openapi.ts can read it while
 * `buf generate` rewrites gen/: the OpenAPI document's error statuses come from here.
 */
export const errorTable: Record<ErrorCode, { code: Code; status: number }> = {
  missing_token: { code: Code.Unauthenticated, status: 401 },
  invalid_api_key: { code: Code.Unauthenticated, status: 401 },
  tenant_mismatch: { code: Code.PermissionDenied, status: 403 },
  invalid_request: { code: Code.InvalidArgument, status: 400 },
  invalid_cursor: { code: Code.InvalidArgument, status: 400 },
  session_not_found: { code: Code.NotFound, status: 404 },
  refresh_token_invalid: { code: Code.Unauthenticated, status: 401 },
  refresh_token_expired: { code: Code.Unauthenticated, status: 401 },
  session_revoked: { code: Code.Unauthenticated, status: 401 },
  not_found: { code: Code.NotFound, status: 404 },
  method_not_allowed: { code: Code.Unimplemented, status: 405 },
  request_timeout: { code: Code.DeadlineExceeded, status: 408 },
  // INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: the Connect protocol sends that as HTTP 429, which reads as rate limiting.
  payload_too_large: { code: Code.InvalidArgument, status: 413 },
  uri_too_long: { code: Code.InvalidArgument, status: 414 },
  unsupported_media_type: { code: Code.InvalidArgument, status: 415 },
  // A message compression the server does not take (gRPC: UNIMPLEMENTED, with grpc-accept-encoding).
  unsupported_encoding: { code: Code.Unimplemented, status: 415 },
  headers_too_large: { code: Code.ResourceExhausted, status: 431 },
  rate_limit_exceeded: { code: Code.ResourceExhausted, status: 429 },
  // Only RPCs carry a client deadline (grpc-timeout, connect-timeout-ms); 504 is its HTTP form.
  deadline_exceeded: { code: Code.DeadlineExceeded, status: 504 },
  // An event cursor older than the events kept: the reader must resynchronise (410 Gone on REST).
  cursor_expired: { code: Code.OutOfRange, status: 410 },
  // An event stream whose reader fell too far behind: it is ended, and the reader resumes from its last cursor.
  subscriber_too_slow: { code: Code.Unavailable, status: 503 },
  // The client went away (closed the connection, reset the stream): nobody reads the answer.
  cancelled: { code: Code.Canceled, status: 499 },
  unavailable: { code: Code.Unavailable, status: 503 },
  internal: { code: Code.Internal, status: 500 },
};
