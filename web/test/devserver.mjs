// A tiny stand-in for `pe serve` for front-end work: serves ../../server/static and answers the API the
// page uses with canned data. Runs are faked: `sh FILE` / `sh -c '…'` interpret echo/cat/exit/head/sleep
// lines, nothing else. A run asked for with Accept: text/event-stream is streamed as `pe serve` does
// (start, stdout/stderr as each line runs, archive, result). Not used by the real test harness (that runs e2e.mjs against `pe serve`).
//
//   node test/devserver.mjs [--port 8090]     env: DEV_DELAY_MS (default 1500)
//
// Canned gist: #gist=demo0001 (pe.toml runs hello.sh, which prints "gist says hi").
// Fake GitHub API at /fakegh (the config's github_api): POST /fakegh/gists with any Bearer token.
// Error demo: image "error/429" → 429 with Retry-After; "error/503" → 503.

import http from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, join, extname, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const staticDir = join(here, "..", "..", "server", "static");
const portArg = process.argv.indexOf("--port");
const port = portArg >= 0 ? Number(process.argv[portArg + 1]) : Number(process.env.PORT || 8090); // --port 0: any free port
const delay = Number(process.env.DEV_DELAY_MS ?? 1500);

// Use the page's own pearchive and shell modules.
const lib = await esbuild.build({
  stdin: { contents: 'export * from "./src/pearchive"; export * from "./src/shell";', resolveDir: join(here, ".."), loader: "ts" },
  bundle: true, platform: "node", format: "esm", write: false, logLevel: "error",
});
const { pack, unpack, frame, unframe, shellSplit } = await import("data:text/javascript;base64," + Buffer.from(lib.outputFiles[0].contents).toString("base64"));

const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml" };

const images = {
  default: "docker.io/library/busybox:1.36",
  images: [
    { reference: "docker.io/library/busybox:1.36", digest: "sha256:086417a48026173aaadca4ce43a1e4b385e8e62cc738ba79fc6637049674cac0", description: "BusyBox 1.36: sh and the usual tools" },
    { reference: "docker.io/library/alpine:3.20", digest: "sha256:beefdbd8a1da6d2915566fde36db9db0b524eb737fc57cd1367effd16dc0d06d", description: "Alpine Linux 3.20" },
    { reference: "docker.io/library/gcc:14", digest: "sha256:1111111111111111111111111111111111111111111111111111111111111111", description: "GCC 14 (C, C++)" },
    { reference: "docker.io/library/python:3.12-slim", digest: "sha256:2222222222222222222222222222222222222222222222222222222222222222", description: "Python 3.12" },
  ],
};

const gists = new Map([
  ["demo0001", [{ version: "c0ffee0000000000000000000000000000000001", files: {
    "hello.sh": "echo gist says hi\necho from the gist >&2\n",
    "notes.txt": "a second file\n",
    "pe.toml": '# demo gist\nimage = "docker.io/library/busybox:1.36"\ncmd = "sh hello.sh"\nenv = """\nGREETING=hi\n"""\n',
  } }]],
]);
let nextGist = 1;
let queued = 0, runningNow = 0;
const slots = 1;
let slotFree = Promise.resolve();

function send(res, status, body, headers = {}) {
  res.writeHead(status, { "Cache-Control": "no-store", ...headers });
  res.end(body);
}
const json = (res, status, v, headers = {}) => send(res, status, JSON.stringify(v), { "Content-Type": "application/json", ...headers });
const readBody = (req) => new Promise((ok, bad) => { const c = []; req.on("data", (d) => c.push(d)); req.on("end", () => ok(Buffer.concat(c))); req.on("error", bad); });

// fakeRun runs the fake program; onOut(stream, data), when given, gets stdout and stderr as each
// line writes them.
async function fakeRun(reqJson, files, onOut) {
  const out = { stdout: "", stderr: "", dir: new Map(), code: 0 };
  const argv = [...(reqJson.entrypoint ?? []), ...(reqJson.cmd ?? ["sh"])];
  const text = (p) => { const f = files.get(p.replace(/^\/run\/pe\/input\//, "")); return f ? Buffer.from(f).toString() : null; };
  const line = async (l) => {
    l = l.trim();
    if (!l || l.startsWith("#")) return true;
    let words;
    try { words = shellSplit(l); } catch { out.stderr += `sh: syntax error: ${l}\n`; out.code = 2; return false; }
    let target = "stdout";
    const gt = words.findIndex((w) => w === ">" || w === ">&2" || w === "1>&2");
    if (gt >= 0) {
      if (words[gt] === ">") target = words[gt + 1] ?? "stdout";
      else target = "stderr";
      words = words.slice(0, gt);
    }
    let data = "";
    if (words[0] === "echo") data = words.slice(1).join(" ") + "\n";
    else if (words[0] === "cat") { for (const p of words.slice(1)) { const t = text(p); if (t === null) { out.stderr += `cat: can't open '${p}': No such file or directory\n`; out.code = 1; } else data += t; } }
    else if (words[0] === "exit") { out.code = Number(words[1] ?? 0); return false; }
    else if (words[0] === "head" && words[1] === "-c") { const n = Number(words[2]); data = Buffer.from(Array.from({ length: n }, (_, i) => (i * 73 + 11) & 255)); }
    else if (words[0] === "ls") data = [...files.keys()].join("\n") + "\n";
    else if (words[0] === "sleep") { await new Promise((r) => setTimeout(r, Math.min(Number(words[1]) || 0, 10) * 1000)); return true; }
    else return true; // everything else is silently ignored by the fake
    if (target === "stdout" || target === "stderr") {
      out[target] += data;
      onOut?.(target, data);
    }
    else if (target.startsWith("/run/pe/output/")) out.dir.set(target.slice("/run/pe/output/".length), Buffer.from(data));
    return true;
  };
  if (argv[0] === "sh" && argv[1] === "-c") { for (const l of (argv[2] ?? "").split("\n")) if (!(await line(l))) break; }
  else if (argv[0] === "sh" && argv[1]) { const t = text(argv[1]); if (t === null) { out.stderr += `sh: can't open '${argv[1]}': No such file or directory\n`; out.code = 2; } else for (const l of t.split("\n")) if (!(await line(l))) break; }
  else if (argv[0] === "echo" || argv[0] === "cat" || argv[0] === "exit" || argv[0] === "ls") await line(argv.map((w) => (/^[\w./-]+$/.test(w) ? w : `'${w.replace(/'/g, "'\\''")}'`)).join(" "));
  else { out.stderr += `${argv[0]}: not found (this is the fake devserver)\n`; out.code = 127; }
  return out;
}

async function runi(req, res, ref) {
  if (ref.startsWith("error/")) {
    const code = Number(ref.slice(6)) || 500;
    return json(res, code, { error: code === 429 ? "rate limited" : "busy", detail: "demo error from the devserver" }, { "Retry-After": "3" });
  }
  if (req.headers["content-type"] !== "application/x.pe.archivev1") return json(res, 400, { error: "bad content type", detail: `got ${req.headers["content-type"]}` });
  const body = new Uint8Array(await readBody(req));
  if (body.length > 1048576) return json(res, 413, { error: "request too large", detail: `${body.length} bytes > 1048576` });
  let reqJson, files;
  try {
    const f = unframe(body);
    reqJson = f.json;
    files = new Map(unpack(f.archive).filter((e) => e.data).map((e) => [e.path, e.data]));
  } catch (e) {
    return json(res, 400, { error: "bad request", detail: e.message });
  }
  queued++;
  const prev = slotFree;
  let release;
  slotFree = new Promise((r) => (release = r));
  await prev;
  queued--; runningNow++;
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, delay));
  const streaming = (req.headers.accept ?? "").includes("text/event-stream");
  const event = (name, data) => res.write(`event: ${name}\ndata: ${data}\n\n`);
  if (streaming) {
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no" });
    event("start", JSON.stringify({ request_id: "dev" + t0 }));
  }
  const o = await fakeRun(reqJson, files, streaming ? (t, d) => event(t, JSON.stringify(Buffer.from(d).toString())) : undefined);
  runningNow--; release();
  const archive = pack([
    { path: "stdout", data: o.stdout },
    { path: "stderr", data: o.stderr },
    ...[...o.dir].map(([n, d]) => ({ path: "dir/" + n, data: new Uint8Array(d) })),
  ]);
  const resp = {
    kind: "Ok", siginfo: { Exited: o.code }, exit_code: o.code, timed_out: false,
    rusage: { ru_utime: { sec: 0, usec: 1200 }, ru_stime: { sec: 0, usec: 3400 }, ru_maxrss: 2048 },
    manifest_digest: images.images.find((i) => i.reference === ref)?.digest ?? "sha256:" + "0".repeat(64),
    stdout_truncated: false, stderr_truncated: false, output_truncated: false, duration_ms: Date.now() - t0,
  };
  if (streaming) {
    event("archive", JSON.stringify(Buffer.from(archive).toString("base64")));
    event("result", JSON.stringify(resp));
    return res.end();
  }
  send(res, 200, frame(resp, archive), { "Content-Type": "application/x.pe.archivev1" });
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://x");
    const p = url.pathname;
    if (req.method === "GET" && p === "/api/v2/images") return json(res, 200, images);
    if (req.method === "GET" && p === "/api/v2/config") return json(res, 200, { github_api: `http://${req.headers.host}/fakegh`, max_body: 1048576, timeout_ms: 10000 });
    if (req.method === "GET" && p === "/api/v2/status") return json(res, 200, { queued, running: runningNow, slots });
    if (req.method === "POST" && p.startsWith("/api/v2/runi/amd64/linux/")) return await runi(req, res, decodeURIComponent(p.slice("/api/v2/runi/amd64/linux/".length)));
    let m;
    if (req.method === "GET" && (m = /^\/api\/gh\/gist\/([\w-]+)(?:\/([\w-]+))?$/.exec(p))) {
      const hist = gists.get(m[1]);
      const g = hist && (m[2] ? hist.find((h) => h.version === m[2]) : hist[0]);
      if (!g) return json(res, 404, { error: "not found", detail: `gist ${m[1]}${m[2] ? "/" + m[2] : ""}` });
      return json(res, 200, { files: g.files, version: g.version, versions: hist.map((h) => h.version) });
    }
    if (req.method === "POST" && p === "/fakegh/gists") {
      if (!/^Bearer \S+/.test(req.headers.authorization ?? "")) return json(res, 401, { message: "Requires authentication" });
      const b = JSON.parse((await readBody(req)).toString());
      const id = "dev" + String(nextGist++).padStart(5, "0");
      const version = "e" + String(Date.now()).padStart(39, "0");
      const files = Object.fromEntries(Object.entries(b.files).map(([k, v]) => [k, v.content]));
      gists.set(id, [{ version, files }]);
      return json(res, 201, { id, html_url: `http://${req.headers.host}/#gist=${id}`, history: [{ version }], files: b.files });
    }
    if (req.method !== "GET" && req.method !== "HEAD") return json(res, 405, { error: "method not allowed", detail: "" });
    if (p.startsWith("/api/")) return json(res, 404, { error: "not found", detail: p });
    const file = normalize(p === "/" ? "/index.html" : p);
    const data = await readFile(join(staticDir, file)).catch(() => null);
    if (!data) return send(res, 404, "not found", { "Content-Type": "text/plain" });
    send(res, 200, data, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff" });
  } catch (e) {
    json(res, 500, { error: "internal", detail: String(e && e.stack || e) });
  }
});
server.listen(port, "127.0.0.1", () => console.log(`devserver: http://127.0.0.1:${server.address().port}/  (gist: #gist=demo0001)`));
