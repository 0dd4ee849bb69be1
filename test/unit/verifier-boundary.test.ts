import { readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import * as client from "../../src/client/verifier.js";
import * as server from "../../src/domain/signing-keys.js";

const root = resolve(import.meta.dirname, "../..");

/** Every module `entry` imports, transitively: relative ones as paths, packages by name. */
function importGraph(entry: string): { files: string[]; packages: string[] } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string) => {
    if (files.has(file)) return;
    files.add(file);
    const source = readFileSync(file, "utf8");
    for (const [, specifier] of source.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s+"([^"]+)"|\bimport\(\s*"([^"]+)"\s*\)/g)) {
      if (specifier === undefined) continue;
      if (specifier.startsWith(".")) visit(resolve(dirname(file), specifier.replace(/\.js$/, ".ts")));
      else packages.add(specifier);
    }
  };
  visit(join(root, "src/client/verifier.ts"));
  return { files: [...files].map((f) => relative(root, f)).sort(), packages: [...packages].sort() };
}

describe("the local verifier stands on its own", () => {
  it("imports only its own folder, jose and Node's built-ins: no server code, no MySQL", () => {
    const { files, packages } = importGraph("src/client/verifier.ts");
    expect(files).toEqual(["src/client/sse.ts", "src/client/verifier.ts"]);
    expect(packages.filter((p) => !p.startsWith("node:"))).toEqual(["jose"]);
  });

  it("is the package's ./verifier export, built from src/client", () => {
    const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { exports: Record<string, { types: string; default: string }> };
    expect(pkg.exports["./verifier"]).toEqual({ types: "./dist/src/client/verifier.d.ts", default: "./dist/src/client/verifier.js" });
  });

  it("holds the server's token lifetime and clock tolerance (it keeps a denial that long)", () => {
    expect(client.maxAccessTokenTtlSeconds).toBe(server.maxAccessTokenTtlSeconds);
    expect(client.clockToleranceSeconds).toBe(server.clockToleranceSeconds);
  });
});
