import pino, { type DestinationStream, type Logger } from "pino";

/** What logs say of a URL: the path only, since a query string may carry anything a client put there. */
export const pathOf = (url: string) => url.split("?")[0];

/**
 * The service's one logger (JSON lines, pino), shared by the HTTP layer and background work.
 * Bodies, headers and query strings are never logged; errors keep their type, message, codes and stack.
 *
 * To stdout, lines are written asynchronously: while one write is in progress the next lines gather
 * and go out together, so under load one line per request costs a few microseconds rather than a
 * system call each, and at rest every line goes out at once. `flushLogs` (at shutdown) writes what
 * is pending; a crash can lose the last few lines.
 */
export function createLogger(level: string, stream: DestinationStream = pino.destination({ dest: 1, sync: false })): Logger {
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

/** Writes out what the logger holds (its stdout destination buffers); call before exiting. */
export function flushLogs(log: Logger): void {
  log.flush();
}
