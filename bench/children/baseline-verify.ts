import { createServer } from "node:http";
import { createLocalJWKSet, jwtVerify } from "jose";

/**
 * The baseline: a bare node:http server doing only the signature and claim check the service's
 * verify does (jose, EdDSA), with the JWKS already in memory. No auth, no database, no framework.
 */
const jwksUrl = process.env.JWKS_URL as string;
const jwks = createLocalJWKSet((await (await fetch(jwksUrl)).json()) as never);

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", async () => {
    try {
      const { token } = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { token: string };
      const { payload } = await jwtVerify(token, jwks, { algorithms: ["EdDSA"], typ: "at+jwt" });
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ valid: true, session_id: payload.sid }));
    } catch {
      res.writeHead(200, { "content-type": "application/json" }).end('{"valid":false}');
    }
  });
});
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  process.send?.({ port: typeof address === "object" && address ? address.port : 0 });
});
