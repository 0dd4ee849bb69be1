import pino, { type DestinationStream, type Logger } from "pino";

/** What logs say of a URL: the path only, since a query string may carry anything a client put there. */
export const pathOf = (url: string) => url.split("?")[0];

/**
 * The service's one logger (JSON lines, pino), shared by the HTTP layer and background work.
 * Bodies, headers and query strings are never logged; errors keep their type, message, codes and stack.
 */
export function createLogger(level: string, stream?: DestinationStream): Logger {
  return pino(
    {
      level,
      serializers: {
        req: (req: { method: string; url: string; ip?: string }) => ({ method: req.method, path: pathOf(req.url), remoteAddress: req.ip }),
        err: (err: Error & { code?: string; errno?: number }) => ({
          type: err.name,
          message: err.message,
          code: err.code,
          errno: err.errno,
          stack: err.stack ?? "",
        }),
      },
    },
    stream,
  );
}
