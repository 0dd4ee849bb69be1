import { createReadStream } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import type { FastifyInstance } from "fastify";
import openApiDocument from "../../gen/openapi/sessions.openapi.json" with { type: "json" };

/** Where the OpenAPI document and the reference page are served (no authentication, like JWKS). */
export const openApiPath = "/openapi.json";
export const docsPath = "/docs";

/** The document tools/protoc-gen-openapi.ts generated from the proto (`buf generate`), sent as it is. */
const openApiText = JSON.stringify(openApiDocument);

// Swagger UI's standalone bundle, served from node_modules: the page loads nothing from elsewhere.
// Picked over Redoc (2 and 3 load their logo from a CDN, refused offline and by this CSP) and
// Scalar (2.5× the bytes, and it needs inline styles): it renders under the strict policy below.
const swaggerUi = dirname(createRequire(import.meta.url).resolve("swagger-ui-dist/package.json"));
const assets: Record<string, { file: string; type: string }> = {
  "swagger-ui-bundle.js": { file: join(swaggerUi, "swagger-ui-bundle.js"), type: "text/javascript; charset=utf-8" },
  "swagger-ui.css": { file: join(swaggerUi, "swagger-ui.css"), type: "text/css; charset=utf-8" },
  "favicon-32x32.png": { file: join(swaggerUi, "favicon-32x32.png"), type: "image/png" },
};

/**
 * Scripts and styles from this origin only (no inline script: the page's own script is a file
 * too), images from here or data: URLs (Swagger UI's icons), requests to this origin only ("Try it
 * out" calls the API here), and the page may not be framed.
 */
const docsCsp = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

const docsHtml = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(openApiDocument.info.title)} reference</title>
<link rel="icon" type="image/png" href="${docsPath}/favicon-32x32.png">
<link rel="stylesheet" href="${docsPath}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="${docsPath}/swagger-ui-bundle.js"></script>
<script src="${docsPath}/init.js"></script>
</body>
</html>
`;

// validatorUrl: null, or Swagger UI would send the document to an online validator.
const docsInit = `window.ui = SwaggerUIBundle({
  url: ${JSON.stringify(openApiPath)},
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  displayOperationId: true,
  defaultModelsExpandDepth: 0,
});
`;

/** GET /openapi.json, and GET /docs: the interactive reference rendering it. */
export function registerApiDocs(app: FastifyInstance): void {
  app.get(openApiPath, async (_req, reply) => {
    reply.header("cache-control", "no-cache").type("application/json; charset=utf-8");
    return reply.send(openApiText);
  });
  app.get(docsPath, async (_req, reply) => {
    reply
      .header("content-security-policy", docsCsp)
      .header("x-content-type-options", "nosniff")
      .header("referrer-policy", "no-referrer")
      .header("cache-control", "no-cache")
      .type("text/html; charset=utf-8");
    return reply.send(docsHtml);
  });
  app.get(`${docsPath}/init.js`, async (_req, reply) => {
    reply.header("x-content-type-options", "nosniff").header("cache-control", "no-cache").type("text/javascript; charset=utf-8");
    return reply.send(docsInit);
  });
  for (const [name, { file, type }] of Object.entries(assets)) {
    app.get(`${docsPath}/${name}`, async (_req, reply) => {
      // The bundle changes only with the installed swagger-ui-dist, that is with a deploy.
      reply.header("x-content-type-options", "nosniff").header("cache-control", "public, max-age=3600").type(type);
      return reply.send(createReadStream(file));
    });
  }
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
