// The pe web page: plain DOM + CodeMirror 6.

import * as api from "./api";
import { makeState, makeView, prepareLanguages, EditorState } from "./editor";
import { TabList } from "./tabs";
import { badPath } from "./pearchive";
import { decodeUtf8, formatSize, hexDump, isText } from "./bytes";
import { shellSplit } from "./shell";
import { parsePeToml, formatPeToml, PeFields } from "./petoml";
import { State, InputFile, encodeState, decodeState, parseHash, gistHash, envList } from "./urlstate";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

const el = {
  image: $<HTMLInputElement>("image"),
  presets: $<HTMLDataListElement>("image-presets"),
  imageDesc: $("image-desc"),
  cmd: $<HTMLInputElement>("cmd"),
  entrypoint: $<HTMLInputElement>("entrypoint"),
  env: $<HTMLTextAreaElement>("env"),
  stdin: $<HTMLSelectElement>("stdin"),
  more: $<HTMLDetailsElement>("more"),
  run: $<HTMLButtonElement>("run"),
  status: $("status"),
  runInfo: $("run-info"),
  fileTabs: $("file-tabs"),
  filePanel: $("file-panel"),
  editor: $("editor"),
  binary: $("binary-view"),
  outTabs: $("out-tabs"),
  outPanel: $("out-panel"),
  share: $<HTMLButtonElement>("share"),
  shareBox: $("share-box"),
  shareUrl: $<HTMLInputElement>("share-url"),
  shareMsg: $("share-msg"),
  gistInfo: $("gist-info"),
  saveGist: $<HTMLButtonElement>("save-gist"),
  reset: $<HTMLButtonElement>("reset"),
  helpBtn: $<HTMLButtonElement>("help-btn"),
  help: $("help"),
  helpLimits: $("help-limits"),
  newFile: $<HTMLButtonElement>("new-file"),
  renameFile: $<HTMLButtonElement>("rename-file"),
  deleteFile: $<HTMLButtonElement>("delete-file"),
  uploadBtn: $<HTMLButtonElement>("upload-btn"),
  upload: $<HTMLInputElement>("upload"),
};

// ---------------------------------------------------------------- state

interface Entry {
  path: string;
  /** Bytes for binary files; text files keep their text in `state`. */
  bytes: Uint8Array | null;
  state: EditorState | null;
}

let entries: Entry[] = [];
let activePath = "";
let extra: Pick<State, "timeout" | "memory"> = {};
let defaultImage = "busybox";
let config: api.Config = { github_api: "https://api.github.com", max_body: 1 << 20, timeout_ms: 10000 };
let lastHash = "";
let running = false;

const view = makeView(el.editor);

const DEFAULT_SCRIPT = `# Input files are in /run/pe/input, the working directory.
# Files written to /run/pe/output come back as output tabs.
echo hello
ls -R /run/pe/input
cat folder/data.txt
echo "this line goes to stderr" >&2
echo "a result file" > /run/pe/output/result.txt
`;

function defaultState(): State {
  return {
    image: defaultImage,
    cmd: "sh test.sh",
    entrypoint: "",
    env: "",
    stdin: null,
    files: [
      { path: "test.sh", data: DEFAULT_SCRIPT },
      { path: "folder/data.txt", data: "some data in folder/data.txt\n" },
    ],
  };
}

function textOf(e: Entry): string {
  return e.state ? e.state.doc.toString() : "";
}

function newEntry(path: string, data: string | Uint8Array): Entry {
  if (typeof data === "string") return { path, bytes: null, state: makeState(path, data, `Contents of ${path}`) };
  return { path, bytes: data, state: null };
}

function saveActive() {
  const cur = entries.find((e) => e.path === activePath);
  if (cur && cur.state) cur.state = view.state;
}

function collect(): State {
  saveActive();
  return {
    image: el.image.value.trim(),
    cmd: el.cmd.value,
    entrypoint: el.entrypoint.value,
    env: el.env.value,
    stdin: el.stdin.value || null,
    files: entries.map((e): InputFile => ({ path: e.path, data: e.bytes ?? textOf(e) })),
    ...extra,
  };
}

async function apply(st: State) {
  await prepareLanguages(st.files.map((f) => f.path));
  el.image.value = st.image || defaultImage;
  el.cmd.value = st.cmd;
  el.entrypoint.value = st.entrypoint;
  el.env.value = st.env;
  if (st.entrypoint || st.env) el.more.open = true;
  extra = {};
  if (st.timeout !== undefined) extra.timeout = st.timeout;
  if (st.memory !== undefined) extra.memory = st.memory;
  entries = [];
  for (const f of st.files) {
    if (entries.some((e) => e.path === f.path)) continue;
    entries.push(newEntry(f.path, f.data));
  }
  activePath = "";
  renderFiles(entries[0]?.path ?? "");
  renderStdin(st.stdin);
  describeImage();
}

// ---------------------------------------------------------------- input files

const fileTabs = new TabList(el.fileTabs, el.filePanel, "file", (p) => showFile(p));

function renderFiles(select: string) {
  fileTabs.set(
    entries.map((e) => ({ key: e.path, label: e.path, title: e.bytes ? `${e.path} (binary, ${e.bytes.length} bytes)` : e.path, className: e.bytes ? "bin" : "" })),
    select,
  );
  showFile(fileTabs.current);
  const none = entries.length === 0;
  el.renameFile.disabled = none;
  el.deleteFile.disabled = none;
}

function showFile(path: string) {
  saveActive();
  activePath = path;
  const e = entries.find((x) => x.path === path);
  if (!e) {
    el.editor.hidden = true;
    el.binary.hidden = false;
    el.binary.replaceChildren(para("No input files. Use New or Upload to add one."));
    return;
  }
  if (e.state) {
    el.binary.hidden = true;
    el.editor.hidden = false;
    view.setState(e.state);
  } else {
    el.editor.hidden = true;
    el.binary.hidden = false;
    el.binary.replaceChildren(...binaryView(e.path, e.bytes!));
  }
}

function renderStdin(selected: string | null) {
  const opts = [new Option("(none: /dev/null)", "")];
  for (const e of entries) opts.push(new Option(e.path, e.path));
  el.stdin.replaceChildren(...opts);
  el.stdin.value = selected && entries.some((e) => e.path === selected) ? selected : "";
  if (selected && el.stdin.value !== selected) {
    // keep an unknown stdin visible rather than silently dropping it
    el.stdin.append(new Option(`${selected} (missing)`, selected));
    el.stdin.value = selected;
  }
}

function pathProblem(p: string, except?: string): string | null {
  if (!p) return "Enter a file name.";
  const bad = badPath(p);
  if (bad) return `Not a valid path: ${bad}.`;
  for (const e of entries) {
    if (e.path === except) continue;
    if (e.path === p) return `${p} already exists.`;
    if (e.path.startsWith(p + "/")) return `${p} is a directory of ${e.path}.`;
    if (p.startsWith(e.path + "/")) return `${e.path} is a file, not a directory.`;
  }
  return null;
}

async function newFile() {
  let n = 1;
  while (entries.some((e) => e.path === `untitled-${n}.txt`)) n++;
  const p = await ask("New file", "File name (a/b.txt makes a folder)", `untitled-${n}.txt`, (v) => pathProblem(v));
  if (p === null) return;
  await prepareLanguages([p]);
  entries.push(newEntry(p, ""));
  renderFiles(p);
  renderStdin(el.stdin.value || null);
  view.focus();
}

async function renameFile() {
  const e = entries.find((x) => x.path === activePath);
  if (!e) return;
  const p = await ask("Rename file", "New name", e.path, (v) => pathProblem(v, e.path));
  if (p === null || p === e.path) return fileTabs.focusSelected();
  await prepareLanguages([p]);
  saveActive();
  const old = e.path;
  const stdinWas = el.stdin.value;
  // a new state: the language may change with the name (the undo history does not survive a rename)
  if (e.state) e.state = makeState(p, textOf(e), `Contents of ${p}`);
  e.path = p;
  activePath = ""; // the view still shows the old state: do not save it over the new one
  renderFiles(p);
  renderStdin(stdinWas === old ? p : stdinWas || null);
  fileTabs.focusSelected();
}

async function deleteFile() {
  const e = entries.find((x) => x.path === activePath);
  if (!e) return;
  const ok = await ask("Delete file", null, `Delete ${e.path}?`, () => null);
  if (ok === null) return fileTabs.focusSelected();
  const i = entries.indexOf(e);
  entries.splice(i, 1);
  activePath = "";
  renderFiles(entries[Math.min(i, entries.length - 1)]?.path ?? "");
  renderStdin(el.stdin.value === e.path ? null : el.stdin.value || null);
  if (entries.length) fileTabs.focusSelected();
  else el.newFile.focus();
}

async function uploadFiles() {
  const list = el.upload.files;
  if (!list) return;
  let last = "";
  for (const f of Array.from(list)) {
    const bytes = new Uint8Array(await f.arrayBuffer());
    let name = f.name;
    let k = 1;
    while (pathProblem(name)) name = `${k++}-${f.name}`;
    await prepareLanguages([name]);
    entries.push(newEntry(name, isText(bytes) ? decodeUtf8(bytes)! : bytes));
    last = name;
  }
  el.upload.value = "";
  if (last) {
    renderFiles(last);
    renderStdin(el.stdin.value || null);
    fileTabs.focusSelected();
  }
}

// ---------------------------------------------------------------- small DOM helpers

function para(text: string, cls?: string): HTMLParagraphElement {
  const p = document.createElement("p");
  p.textContent = text;
  if (cls) p.className = cls;
  return p;
}

let blobUrls: string[] = [];
function downloadLink(name: string, data: Uint8Array, label = "Download"): HTMLAnchorElement {
  const a = document.createElement("a");
  const url = URL.createObjectURL(new Blob([data as BlobPart], { type: "application/octet-stream" }));
  blobUrls.push(url);
  a.href = url;
  a.download = name.split("/").pop() || "file";
  a.textContent = label;
  return a;
}

function binaryView(name: string, data: Uint8Array): HTMLElement[] {
  const head = para(`binary, ${data.length} bytes `, "binary-head");
  head.append(downloadLink(name, data, `Download ${name.split("/").pop()}`));
  const pre = document.createElement("pre");
  pre.className = "hex";
  pre.textContent = hexDump(data);
  return [head, pre];
}

// ---------------------------------------------------------------- dialogs

const dlg = $<HTMLDialogElement>("dlg");
function ask(title: string, label: string | null, initial: string, validate: (v: string) => string | null): Promise<string | null> {
  $("dlg-title").textContent = title;
  const input = $<HTMLInputElement>("dlg-input");
  const err = $("dlg-error");
  $("dlg-field").hidden = label === null;
  $("dlg-text").hidden = label !== null;
  $("dlg-text").textContent = label === null ? initial : "";
  $("dlg-label").textContent = label ?? "";
  input.value = label === null ? "" : initial;
  err.textContent = "";
  $<HTMLButtonElement>("dlg-ok").textContent = label === null ? title.split(" ")[0] : "OK";
  return new Promise((resolve) => {
    const form = $<HTMLFormElement>("dlg-form");
    const done = (v: string | null) => {
      form.removeEventListener("submit", submit);
      $("dlg-cancel").removeEventListener("click", cancel);
      dlg.removeEventListener("cancel", cancel);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const submit = (ev: Event) => {
      ev.preventDefault();
      const v = label === null ? initial : input.value.trim();
      const problem = validate(v);
      if (problem) {
        err.textContent = problem;
        input.focus();
        return;
      }
      done(v);
    };
    const cancel = (ev: Event) => {
      ev.preventDefault();
      done(null);
    };
    form.addEventListener("submit", submit);
    $("dlg-cancel").addEventListener("click", cancel);
    dlg.addEventListener("cancel", cancel);
    dlg.showModal();
    if (label !== null) {
      input.focus();
      const dot = input.value.lastIndexOf(".");
      input.setSelectionRange(0, dot > input.value.lastIndexOf("/") ? dot : input.value.length);
    } else $("dlg-ok").focus();
  });
}

// ---------------------------------------------------------------- status line

type StatusKind = "idle" | "pending" | "done" | "error";
function setStatus(kind: StatusKind, text: string) {
  el.status.dataset.state = kind;
  el.status.textContent = text;
}

// ---------------------------------------------------------------- outputs

interface Output {
  key: string;
  name: string;
  data: Uint8Array;
}
let outputs: Output[] = [];
const outTabs = new TabList(el.outTabs, el.outPanel, "out", (k) => showOutput(k));

function renderOutputs(res: api.RunResult) {
  for (const u of blobUrls) URL.revokeObjectURL(u);
  blobUrls = [];
  outputs = [
    { key: "stdout", name: "stdout", data: res.stdout },
    { key: "stderr", name: "stderr", data: res.stderr },
    ...res.files.map((f) => ({ key: "file:" + f.name, name: f.name, data: f.data })),
  ];
  outTabs.set(
    outputs.map((o) => ({
      key: o.key,
      label: o.name,
      title: `${o.name}: ${o.data.length} bytes`,
      className: o.data.length ? "" : "empty",
    })),
    "stdout",
  );
  showOutput("stdout");
}

function showOutput(key: string) {
  if (live) {
    showLive(key);
    return;
  }
  const o = outputs.find((x) => x.key === key);
  if (!o) {
    el.outPanel.replaceChildren();
    return;
  }
  el.outPanel.dataset.output = o.name;
  if (o.data.length === 0) {
    el.outPanel.replaceChildren(para(`${o.name} is empty.`, "empty-note"));
    return;
  }
  const text = isText(o.data) ? decodeUtf8(o.data) : null;
  if (text === null) {
    el.outPanel.replaceChildren(...binaryView(o.name, o.data));
    return;
  }
  const pre = document.createElement("pre");
  pre.className = o.key === "stderr" ? "text stderr" : "text";
  pre.textContent = text;
  const foot = para(`${formatSize(o.data.length)} `, "out-foot");
  foot.append(downloadLink(o.name, o.data));
  el.outPanel.replaceChildren(pre, foot);
}

// ---------------------------------------------------------------- live output

// The output of the run going on, as the server streams it (null between runs). The result
// replaces it: the live text is a preview (invalid UTF-8 shown as U+FFFD, binary data as text).
let live: { stdout: string; stderr: string; note: string } | null = null;

function beginLive() {
  for (const u of blobUrls) URL.revokeObjectURL(u);
  blobUrls = [];
  live = { stdout: "", stderr: "", note: "running…" };
  outputs = [];
  const keep = outTabs.current === "stderr" ? "stderr" : "stdout";
  outTabs.set(
    [
      { key: "stdout", label: "stdout", className: "empty" },
      { key: "stderr", label: "stderr", className: "empty" },
    ],
    keep,
  );
  showLive(keep);
}

function showLive(key: string) {
  if (!live) return;
  const stream = key === "stderr" ? "stderr" : "stdout";
  const pre = document.createElement("pre");
  pre.className = `text live ${stream}`;
  pre.textContent = live[stream];
  el.outPanel.dataset.output = stream;
  el.outPanel.replaceChildren(pre, para(live.note, "out-foot live-note"));
  el.outTabs.querySelector(`[data-key="${stream}"]`)?.classList.remove("fresh");
}

function appendLive(stream: "stdout" | "stderr", text: string) {
  if (!live || !text) return;
  live[stream] += text;
  const tab = el.outTabs.querySelector(`[data-key="${stream}"]`);
  tab?.classList.remove("empty");
  if (outTabs.current !== stream) {
    tab?.classList.add("fresh");
    return;
  }
  const pre = el.outPanel.querySelector("pre.live");
  if (!pre) return showLive(stream);
  const p = el.outPanel;
  const atEnd = p.scrollTop + p.clientHeight >= p.scrollHeight - 4;
  pre.append(text);
  if (atEnd) p.scrollTop = p.scrollHeight;
}

function liveNote(text: string) {
  if (!live) return;
  live.note = text;
  const n = el.outPanel.querySelector(".live-note");
  if (n) n.textContent = text;
}

/** Ends the live view of a run that gave no result: what came stays, as outputs. */
function endLive() {
  if (!live) return;
  const enc = new TextEncoder();
  outputs = [
    { key: "stdout", name: "stdout", data: enc.encode(live.stdout) },
    { key: "stderr", name: "stderr", data: enc.encode(live.stderr) },
  ];
  live = null;
  showOutput(outTabs.current);
}

function runInfo(res: api.RunResult): string {
  const r = res.response;
  const parts: string[] = [];
  if (r.manifest_digest) parts.push(`image ${r.manifest_digest.slice(0, 19)}…`);
  const ru = r.rusage as { ru_utime?: { sec: number; usec: number }; ru_stime?: { sec: number; usec: number }; ru_maxrss?: number } | undefined;
  const ms = (t?: { sec: number; usec: number }) => (t ? Math.round(t.sec * 1000 + t.usec / 1000) : null);
  if (ru) {
    const u = ms(ru.ru_utime);
    const s = ms(ru.ru_stime);
    if (u !== null) parts.push(`user ${u} ms`);
    if (s !== null) parts.push(`sys ${s} ms`);
    if (typeof ru.ru_maxrss === "number") parts.push(`max RSS ${formatSize(ru.ru_maxrss * 1024)}`);
  }
  parts.push(`round trip ${Math.round(res.elapsed)} ms`);
  return parts.join(" · ");
}

// ---------------------------------------------------------------- run

async function doRun() {
  if (running) return;
  const st = collect();
  let cmd: string[] | null;
  let entrypoint: string[] | null;
  try {
    cmd = st.cmd.trim() ? shellSplit(st.cmd) : null;
    entrypoint = st.entrypoint.trim() ? shellSplit(st.entrypoint) : null;
  } catch (e) {
    setStatus("error", `Command: ${(e as Error).message}.`);
    return;
  }
  if (!st.image) {
    setStatus("error", "Choose an image first.");
    el.image.focus();
    return;
  }
  let body: Uint8Array;
  try {
    const req: api.RunRequest = { cmd, entrypoint, env: envList(st.env), stdin: st.stdin };
    const timeoutMs = api.durationMs(st.timeout);
    if (timeoutMs !== undefined) req.timeout_ms = timeoutMs;
    body = api.runBody(req, st.files);
  } catch (e) {
    setStatus("error", `Input files: ${(e as Error).message}`);
    return;
  }
  if (config.max_body && body.length > config.max_body) {
    setStatus("error", `Input too large: ${formatSize(body.length)}, the server takes at most ${formatSize(config.max_body)}.`);
    return;
  }
  running = true;
  el.run.setAttribute("aria-disabled", "true");
  el.run.textContent = "Running…";
  el.runInfo.textContent = "";
  const t0 = performance.now();
  setStatus("pending", "Sending…");
  // Queue position, estimated from /api/v2/status (it counts every client's runs): read once before
  // sending; afterwards the number ahead of us can only shrink, and an idle slot or an empty queue
  // means we are running.
  let ahead = 0;
  try {
    const s0 = await api.getStatus(AbortSignal.timeout(1000));
    ahead = s0.running >= s0.slots ? s0.queued + 1 : 0;
  } catch {
    ahead = 0;
  }
  const poller = new AbortController();
  // Once the stream says the program started, the status line counts the seconds without asking.
  let started = false;
  const poll = async () => {
    setStatus("pending", ahead > 0 ? `Queued (position ${ahead})…` : "Running…");
    for (;;) {
      await new Promise((r) => setTimeout(r, 300)); // first wait: let the server see our request
      if (poller.signal.aborted) break;
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      if (started) {
        setStatus("pending", `Running… ${secs} s`);
        continue;
      }
      try {
        const s = await api.getStatus(poller.signal);
        if (poller.signal.aborted) break;
        if (s.queued === 0 || s.running < s.slots) ahead = 0;
        else ahead = Math.min(ahead, s.queued);
        if (ahead > 0) setStatus("pending", `Queued (position ${ahead}, ${s.running}/${s.slots} slots busy)… ${secs} s`);
        else setStatus("pending", `Running… ${secs} s`);
      } catch {
        if (poller.signal.aborted) break;
        setStatus("pending", `${ahead > 0 ? "Queued" : "Running"}… ${secs} s`);
      }
    }
  };
  void poll();
  try {
    const res = await api.runLive(st.image, body, {
      onStart: () => {
        started = true;
        ahead = 0;
        setStatus("pending", `Running… ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        beginLive();
      },
      onOutput: (stream, text) => {
        if (!live) beginLive();
        appendLive(stream, text);
      },
      onDropped: () => liveNote("running… (live output stopped: the page fell behind; the result will have it all)"),
    });
    poller.abort();
    live = null;
    const r = res.response;
    const failed = r.kind === "Panic";
    setStatus(failed ? "error" : "done", api.describeResult(res));
    el.runInfo.textContent = runInfo(res);
    renderOutputs(res);
  } catch (e) {
    poller.abort();
    endLive();
    setStatus("error", `Error: ${(e as Error).message}`);
  } finally {
    running = false;
    el.run.removeAttribute("aria-disabled");
    el.run.textContent = "Run";
  }
}

// ---------------------------------------------------------------- share and hash

function setHash(h: string) {
  history.replaceState(null, "", h || location.pathname + location.search);
  lastHash = location.hash;
}

async function share() {
  const st = collect();
  setHash("#s=" + encodeState(st));
  const url = location.href;
  el.shareBox.hidden = false;
  el.shareUrl.value = url;
  let copied = false;
  try {
    if (!navigator.clipboard) throw new Error("no clipboard");
    await navigator.clipboard.writeText(url);
    copied = true;
  } catch {
    copied = false;
  }
  el.shareMsg.textContent = copied ? "Link copied to the clipboard." : "Copy the link above (the clipboard is not available here).";
  el.shareBox.dataset.copied = String(copied);
  if (!copied) {
    el.shareUrl.focus();
    el.shareUrl.select();
  }
  if (url.length > 8000) el.shareMsg.textContent += ` It is long (${url.length} characters): a gist may suit better.`;
}

function showGistInfo(id: string, version: string, pinned: boolean, note = "") {
  const base = location.origin + location.pathname + location.search;
  const link = base + gistHash(id, version);
  el.gistInfo.hidden = false;
  el.gistInfo.replaceChildren();
  const t = document.createElement("span");
  t.append(`${note}Gist `);
  const code = document.createElement("code");
  code.textContent = id;
  t.append(code, ` at revision `);
  const rc = document.createElement("code");
  rc.textContent = version ? version.slice(0, 10) : "?";
  rc.title = version;
  t.append(rc, pinned ? " (pinned). " : " (latest). ");
  const a = document.createElement("a");
  a.href = link;
  a.id = "gist-pinned";
  a.textContent = "Link to this revision";
  el.gistInfo.append(t, a);
}

async function loadGist(id: string, rev?: string) {
  setStatus("pending", `Loading gist ${id}${rev ? " at " + rev : ""}…`);
  el.gistInfo.hidden = true;
  let g: api.Gist;
  try {
    g = await api.getGist(id, rev);
  } catch (e) {
    setStatus("error", `Gist ${id}: ${(e as Error).message}`);
    return false;
  }
  let fields: PeFields = {};
  let problem = "";
  const names = Object.keys(g.files ?? {}).sort();
  if (typeof g.files?.["pe.toml"] === "string") {
    try {
      fields = parsePeToml(g.files["pe.toml"]);
    } catch (e) {
      problem = (e as Error).message;
    }
  }
  const st: State = {
    image: fields.image || defaultImage,
    cmd: fields.cmd ?? "",
    entrypoint: fields.entrypoint ?? "",
    env: fields.env ?? "",
    stdin: fields.stdin ?? null,
    files: names.filter((n) => n !== "pe.toml").map((n) => ({ path: n, data: g.files[n] })),
  };
  if (fields.timeout !== undefined) st.timeout = fields.timeout;
  if (fields.memory !== undefined) st.memory = fields.memory;
  await apply(st);
  showGistInfo(id, g.version, !!rev);
  if (problem) setStatus("error", `${problem} (the files were loaded; check the settings)`);
  else setStatus("idle", `Loaded gist ${id}.`);
  return true;
}

async function loadFromHash() {
  lastHash = location.hash;
  const h = parseHash(location.hash);
  el.shareBox.hidden = true;
  if (h.gist) {
    if (await loadGist(h.gist.id, h.gist.rev)) return;
    // fall through to s= or the default on failure, keeping the error visible
    const msg = el.status.textContent ?? "";
    await apply(h.s ? safeDecode(h.s) : defaultState());
    setStatus("error", msg);
    return;
  }
  el.gistInfo.hidden = true;
  if (h.s) {
    await apply(safeDecode(h.s));
    return;
  }
  await apply(defaultState());
}

function safeDecode(s: string): State {
  try {
    const st = decodeState(s);
    setStatus("idle", "Loaded from the link.");
    return st;
  } catch (e) {
    setStatus("error", `Could not read the link: ${(e as Error).message}`);
    return defaultState();
  }
}

// ---------------------------------------------------------------- save as gist

const TOKEN_KEY = "pe.github_token";
const gistDlg = $<HTMLDialogElement>("gist-dlg");

function gistFiles(st: State): { files: Record<string, string>; problem: string | null } {
  const files: Record<string, string> = {};
  for (const f of st.files) {
    if (f.path.includes("/")) return { files, problem: `Gists cannot hold folders: rename ${f.path} to a name without "/".` };
    if (typeof f.data !== "string") return { files, problem: `Gists hold text only: ${f.path} is binary.` };
    if (f.data.trim() === "") return { files, problem: `GitHub refuses empty gist files: ${f.path} is empty.` };
    if (f.path === "pe.toml") return { files, problem: "pe.toml is written from the settings: rename the input file pe.toml." };
    files[f.path] = f.data;
  }
  files["pe.toml"] = formatPeToml({
    image: st.image,
    cmd: st.cmd.trim(),
    entrypoint: st.entrypoint.trim(),
    env: st.env.trim() ? st.env : "",
    stdin: st.stdin ?? undefined,
    timeout: st.timeout,
    memory: st.memory,
  });
  return { files, problem: null };
}

function openGistDialog() {
  const st = collect();
  const { problem } = gistFiles(st);
  const err = $("gist-error");
  err.textContent = problem ?? "";
  $("gist-api").textContent = config.github_api;
  const tok = $<HTMLInputElement>("gist-token");
  let saved: string | null = null;
  try {
    saved = sessionStorage.getItem(TOKEN_KEY);
  } catch {
    /* storage disabled */
  }
  tok.value = saved ?? "";
  $<HTMLInputElement>("gist-remember").checked = saved !== null;
  const desc = $<HTMLInputElement>("gist-desc");
  if (!desc.value) desc.value = `pe: ${st.cmd || st.image}`;
  gistDlg.showModal();
  (tok.value ? desc : tok).focus();
}

async function submitGist(ev: Event) {
  ev.preventDefault();
  const err = $("gist-error");
  const st = collect();
  const { files, problem } = gistFiles(st);
  if (problem) {
    err.textContent = problem;
    return;
  }
  const token = $<HTMLInputElement>("gist-token").value.trim();
  if (!token) {
    err.textContent = "Enter a GitHub token.";
    $("gist-token").focus();
    return;
  }
  try {
    if ($<HTMLInputElement>("gist-remember").checked) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled */
  }
  const ok = $<HTMLButtonElement>("gist-ok");
  ok.disabled = true;
  err.textContent = "Saving…";
  try {
    const g = await api.createGist(config.github_api, token, $<HTMLInputElement>("gist-desc").value, files);
    const rev = g.history?.[0]?.version ?? "";
    gistDlg.close();
    setHash(gistHash(g.id, rev || undefined));
    showGistInfo(g.id, rev, true, "Saved. ");
    setStatus("idle", `Saved as gist ${g.id}.`);
    $("gist-pinned").focus();
  } catch (e) {
    err.textContent = `Could not save: ${(e as Error).message}`;
  } finally {
    ok.disabled = false;
  }
}

// ---------------------------------------------------------------- images

function describeImage() {
  const v = el.image.value.trim();
  const p = presets.find((x) => x.reference === v);
  el.imageDesc.textContent = p ? (p.description || "") + (p.digest ? ` (${p.digest.slice(0, 19)}…)` : "") : "Any image reference, e.g. docker.io/library/alpine:3.20.";
}
let presets: api.ImagePreset[] = [];

// ---------------------------------------------------------------- wiring

function wire() {
  el.run.addEventListener("click", () => void doRun());
  // Ctrl+Enter / Cmd+Enter runs from anywhere (captured before CodeMirror sees it).
  window.addEventListener(
    "keydown",
    (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.altKey && !document.querySelector("dialog[open]")) {
        e.preventDefault();
        e.stopPropagation();
        void doRun();
      }
    },
    true,
  );
  el.share.addEventListener("click", () => void share());
  el.shareUrl.addEventListener("focus", () => el.shareUrl.select());
  el.saveGist.addEventListener("click", openGistDialog);
  $("gist-form").addEventListener("submit", (e) => void submitGist(e));
  $("gist-cancel").addEventListener("click", () => gistDlg.close());
  el.reset.addEventListener("click", async () => {
    setHash("");
    el.gistInfo.hidden = true;
    el.shareBox.hidden = true;
    await apply(defaultState());
    setStatus("idle", "Reset to the example.");
  });
  el.helpBtn.addEventListener("click", () => {
    el.help.hidden = !el.help.hidden;
    el.helpBtn.setAttribute("aria-expanded", String(!el.help.hidden));
  });
  el.newFile.addEventListener("click", () => void newFile());
  el.renameFile.addEventListener("click", () => void renameFile());
  el.deleteFile.addEventListener("click", () => void deleteFile());
  el.uploadBtn.addEventListener("click", () => el.upload.click());
  el.upload.addEventListener("change", () => void uploadFiles());
  el.image.addEventListener("input", describeImage);
  window.addEventListener("hashchange", () => {
    if (location.hash !== lastHash) void loadFromHash();
  });
}

async function init() {
  wire();
  const [imgs, cfg] = await Promise.allSettled([api.getImages(), api.getConfig()]);
  if (imgs.status === "fulfilled") {
    presets = imgs.value.images ?? [];
    if (imgs.value.default) defaultImage = imgs.value.default;
    el.presets.replaceChildren(
      ...presets.map((p) => {
        const o = document.createElement("option");
        o.value = p.reference;
        if (p.description) o.label = p.description;
        return o;
      }),
    );
  }
  if (cfg.status === "fulfilled") {
    config = { ...config, ...cfg.value };
    el.helpLimits.textContent = `Limits on this server: ${Math.round(config.timeout_ms / 100) / 10} s of run time by default, ${formatSize(config.max_body)} of input (files and settings).`;
  }
  await loadFromHash();
  document.body.dataset.ready = "true";
}

void init();
