import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AppError, type ErrorCode, isErrorCode } from "../domain/errors.js";

/** The one table from our error codes to Connect/gRPC codes and HTTP statuses. */
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

/** The ErrorInfo domain our errors carry. */
export const errorDomain = "sessions.v1";

/** What a REST error body says, and what a Connect error carries as its ErrorInfo reason. */
export interface PublicError {
  code: ErrorCode;
  message: string;
  status: number;
  /** The request field or parameter a validation error is about. */
  field?: string;
}

const genericInternal = "internal error";

/**
 * Turns anything thrown into the error a caller may see. AppErrors keep their code and message;
 * ConnectErrors raised by the framework keep theirs; anything else becomes a generic `internal`
 * (the original is returned as `cause` for the log only).
 */
export function toPublicError(err: unknown): PublicError & { cause?: unknown } {
  if (err instanceof AppError) {
    return { code: err.code, message: err.message, status: errorTable[err.code].status, ...(err.field !== undefined ? { field: err.field } : {}) };
  }
  if (err instanceof ConnectError) {
    const info = err.findDetails(ErrorInfoSchema)[0];
    const reason = info?.reason;
    if (reason !== undefined && isErrorCode(reason)) {
      const field = info?.metadata.field;
      return { code: reason, message: err.rawMessage, status: errorTable[reason].status, ...(field !== undefined ? { field } : {}) };
    }
    const code = codeFromConnect(err.code);
    const message = code === "internal" ? genericInternal : err.rawMessage;
    return { code, message, status: errorTable[code].status, cause: err };
  }
  return { code: "internal", message: genericInternal, status: 500, cause: err };
}

/** Turns anything thrown into a ConnectError with a google.rpc.ErrorInfo detail. */
export function toConnectError(err: unknown): ConnectError {
  const pub = toPublicError(err);
  const metadata: Record<string, string> = {};
  if (pub.field !== undefined) metadata.field = pub.field;
  return new ConnectError(pub.message, errorTable[pub.code].code, undefined, [
    { desc: ErrorInfoSchema, value: { reason: pub.code, domain: errorDomain, metadata } },
  ]);
}

function codeFromConnect(code: Code): ErrorCode {
  switch (code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
    case Code.FailedPrecondition:
      return "invalid_request";
    case Code.Unauthenticated:
      return "invalid_api_key";
    case Code.NotFound:
      return "not_found";
    case Code.ResourceExhausted:
      return "payload_too_large";
    case Code.Unimplemented:
      return "method_not_allowed";
    case Code.DeadlineExceeded:
      return "deadline_exceeded";
    case Code.Canceled:
      return "cancelled";
    case Code.Unavailable:
      return "unavailable";
    default:
      return "internal";
  }
}
