import net from "node:net";

/**
 * Sends raw bytes on a fresh connection to the local server on `port`, and returns everything it
 * answers until it closes the connection. `halfClose`: the client ends its side once the bytes are
 * written, as `nc -N` does.
 */
export function rawHttp(port: number, request: string, { halfClose = false } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("close", () => resolve(Buffer.concat(chunks).toString("utf8")));
    socket.on("error", reject);
    if (halfClose) socket.end(request);
    else socket.write(request);
  });
}

/** The header lines of a raw HTTP/1.1 request. */
export function headerLines(headers: Record<string, string> | [string, string][]): string {
  return (Array.isArray(headers) ? headers : Object.entries(headers)).map(([k, v]) => `${k}: ${v}\r\n`).join("");
}

/** A raw HTTP/1.1 create of a session for `userId`, with the tenant's headers (and `extraHeaders`, whole lines). */
export function rawCreate(tenantHeaders: Record<string, string>, userId: string, extraHeaders = ""): string {
  const body = JSON.stringify({ user_id: userId });
  const headers = headerLines({ ...tenantHeaders, "content-type": "application/json", "content-length": String(body.length) });
  return `POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\n${headers}${extraHeaders}\r\n${body}`;
}
