/**
 * An HTTP/2 attacker in a process of its own (so the test's own measurements are not slowed by it):
 * opens `connections` h2c connections to `url`, each with `streams` POST streams whose HEADERS never
 * end and carry no DATA. Prints `{"opened": n}` once all are open, holds them until its stdin closes,
 * then, once no more resets arrive, prints `{"reset": n}` (streams the server reset) and exits.
 *   node --import tsx test/helpers/h2-flood.ts <url> <connections> <streams> <headers-json>
 */
import http2 from "node:http2";

const [url = "", connections = "0", streams = "0", headersJson = "{}"] = process.argv.slice(2);
const headers = JSON.parse(headersJson) as Record<string, string>;
const sessions: http2.ClientHttp2Session[] = [];
let opened = 0;
let reset = 0;

for (let c = 0; c < Number(connections); c++) {
  const session = http2.connect(url);
  session.on("error", () => undefined);
  sessions.push(session);
  for (let s = 0; s < Number(streams); s++) {
    const stream = session.request(
      { ":method": "POST", ":path": "/sessions.v1.SessionService/VerifyToken", "content-type": "application/grpc", te: "trailers", ...headers },
      { endStream: false },
    );
    opened++;
    stream.on("error", () => undefined);
    stream.on("close", () => {
      if (stream.rstCode !== 0) reset++;
    });
  }
  // Let the sockets write now and then, as a real attacker's would.
  if (c % 10 === 9) await new Promise((resolve) => setImmediate(resolve));
}
process.stdout.write(`${JSON.stringify({ opened })}\n`);
process.stdin.resume();
process.stdin.on("end", async () => {
  // Resets still in flight are counted too: until a round of PINGs (answered after the server has
  // read everything sent before them) brings no new reset.
  for (let seen = -1; seen !== reset; ) {
    seen = reset;
    await Promise.all(sessions.map((session) => new Promise((resolve) => (session.closed || session.destroyed ? resolve(undefined) : session.ping(() => resolve(undefined))))));
    await new Promise((resolve) => setImmediate(resolve));
  }
  process.stdout.write(`${JSON.stringify({ reset })}\n`);
  for (const session of sessions) session.destroy();
  process.exit(0);
});
