/**
 * The one error type the service throws. Each code is a stable string callers can switch on;
 * src/transport/error-codes.ts gives each its gRPC/Connect code and HTTP status.
 */
export const errorCodes = [
  "missing_token",
  "invalid_api_key",
  "tenant_mismatch",
  "invalid_request",
  "invalid_cursor",
  "session_not_found",
  "refresh_token_invalid",
  "refresh_token_expired",
  "session_revoked",
  "not_found",
  "method_not_allowed",
  "request_timeout",
  "payload_too_large",
  "uri_too_long",
  "unsupported_media_type",
  "unsupported_encoding",
  "headers_too_large",
  "rate_limit_exceeded",
  "deadline_exceeded",
  "cursor_expired",
  "subscriber_too_slow",
  "cancelled",
  "unavailable",
  "internal",
] as const;

export type ErrorCode = (typeof errorCodes)[number];

export function isErrorCode(value: string): value is ErrorCode {
  return (errorCodes as readonly string[]).includes(value);
}

export class AppError extends Error {
  override readonly name = "AppError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** The request field or parameter the error is about, when there is one. */
    readonly field?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
