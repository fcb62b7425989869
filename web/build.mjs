// Builds the page into ../server/static (embedded by the Go server with //go:embed static):
//   app.js      src/main.ts bundled and minified by esbuild (an ES module, no source map)
//   chunk-*.js  code loaded on demand (the C++ and Python parsers), named by content hash
//   index.html, style.css, favicon.svg   copied byte for byte
// The output depends only on the sources and the locked package versions, so CI can rebuild and
// compare with the committed files (`node build.mjs --check`).
// `node build.mjs --tests` instead compiles test/unit/*.test.ts to build-test/*.test.mjs for `node --test`.

import * as esbuild from "esbuild";
import { readFileSync, writeFileSync, mkdirSync, readdirSync, rmSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "server", "static");
const copied = ["index.html", "style.css", "favicon.svg"];
const args = process.argv.slice(2);

async function buildApp() {
  const r = await esbuild.build({
    entryPoints: [join(here, "src", "main.ts")],
    bundle: true,
    minify: true,
    format: "esm",
    splitting: true,
    outdir: out,
    entryNames: "app",
    chunkNames: "chunk-[hash]",
    target: "es2020",
    legalComments: "none",
    charset: "utf8",
    write: false,
    logLevel: "warning",
    absWorkingDir: here,
  });
  const files = {};
  for (const f of r.outputFiles) files[f.path.slice(out.length + 1)] = f.contents;
  for (const f of copied) files[f] = readFileSync(join(here, f));
  return files;
}

async function buildTests() {
  const dir = join(here, "test", "unit");
  const outDir = join(here, "build-test");
  rmSync(outDir, { recursive: true, force: true });
  const entries = readdirSync(dir).filter((f) => f.endsWith(".test.ts")).map((f) => join(dir, f));
  await esbuild.build({
    entryPoints: entries,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    outdir: outDir,
    outExtension: { ".js": ".mjs" },
    external: ["node:*"],
    logLevel: "warning",
    absWorkingDir: here,
  });
}

if (args.includes("--tests")) {
  await buildTests();
} else {
  const files = await buildApp();
  const extra = existsSync(out) ? readdirSync(out).filter((f) => !(f in files)) : [];
  if (args.includes("--check")) {
    const stale = Object.keys(files).filter((f) => {
      const p = join(out, f);
      return !existsSync(p) || Buffer.compare(readFileSync(p), Buffer.from(files[f])) !== 0;
    }).concat(extra);
    if (stale.length) {
      console.error(`server/static is not up to date with web/ (differs: ${stale.join(", ")}); run: cd web && npm ci && npm run build`);
      process.exit(1);
    }
    console.log("server/static is up to date");
  } else {
    mkdirSync(out, { recursive: true });
    for (const f of extra) rmSync(join(out, f), { recursive: true }); // old chunks: server/static holds only this build
    for (const [f, data] of Object.entries(files)) writeFileSync(join(out, f), data);
    for (const f of Object.keys(files).filter((f) => f.endsWith(".js")).sort((a, b) => (a === "app.js" ? -1 : b === "app.js" ? 1 : a.localeCompare(b)))) {
      console.log(`server/static/${f}: ${files[f].length} bytes minified, ${gzipSync(files[f], { level: 9 }).length} bytes gzip`);
    }
  }
}
