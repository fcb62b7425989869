import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeState, decodeState, parseHash, envList, State, gistHash } from "../../src/urlstate";

const state: State = {
  image: "docker.io/library/busybox:1.36",
  cmd: "sh test.sh 'ünï cødé'",
  entrypoint: "",
  env: "A=1\n# comment\nB=✓",
  stdin: "in.txt",
  files: [
    { path: "test.sh", data: "echo 日本語 🚀\n" },
    { path: "in.txt", data: "" },
    { path: "bin/x", data: new Uint8Array([0, 1, 2, 250, 255]) },
  ],
};

test("round trip, including non-Latin-1 text and binary files", () => {
  const s = encodeState(state);
  assert.match(s, /^[A-Za-z0-9+/]+=*$/);
  assert.deepEqual(decodeState(s), state);
});

test("the JSON is the original's {cmd, stdin, env, image, files:[{p,s}|{p,b}]}", () => {
  const j = JSON.parse(new TextDecoder().decode(Buffer.from(encodeState(state), "base64")));
  assert.deepEqual(Object.keys(j), ["cmd", "stdin", "env", "image", "files"]);
  assert.deepEqual(j.files[2], { p: "bin/x", b: "AAEC+v8=" });
  assert.deepEqual(j.files[0], { p: "test.sh", s: "echo 日本語 🚀\n" });
});

test("an old Latin-1 link (the original's btoa of a JS string) still loads", () => {
  // The original did btoa(JSON.stringify(state)): one byte per char, é = 0xE9 (invalid UTF-8).
  const json = JSON.stringify({ cmd: "cat café.txt", stdin: null, env: "", image: "busybox", files: [{ p: "café.txt", s: "crème brûlée ±5 °C" }] });
  const old = Buffer.from(json, "latin1").toString("base64");
  const st = decodeState(old);
  assert.equal(st.cmd, "cat café.txt");
  assert.equal(st.files[0].path, "café.txt");
  assert.equal(st.files[0].data, "crème brûlée ±5 °C");
  assert.equal(st.stdin, null);
});

test("ASCII-only old links decode identically; fields of the wrong type are ignored", () => {
  const old = Buffer.from(JSON.stringify({ cmd: 5, env: "X=1", image: "alpine", stdin: "/dev/null", files: [{ p: "a", s: "b" }, { s: "no path" }, 7, { p: "c", b: "////" }] })).toString("base64");
  const st = decodeState(old);
  assert.deepEqual(st, { image: "alpine", cmd: "", entrypoint: "", env: "X=1", stdin: null, files: [{ path: "a", data: "b" }, { path: "c", data: new Uint8Array([255, 255, 255]) }] });
});

test("URL-safe base64 without padding and percent-encoding are accepted", () => {
  const s = encodeState(state).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  assert.deepEqual(decodeState(s), state);
  const h = parseHash("#s=" + encodeURIComponent(encodeState(state)));
  assert.deepEqual(decodeState(h.s!), state);
});

test("bad links give an error", () => {
  assert.throws(() => decodeState("!!!"), /base64/);
  assert.throws(() => decodeState(Buffer.from("{not json").toString("base64")), /JSON/);
});

test("parseHash: s=, gist=ID, gist=ID/REV, other parts; gist wins", () => {
  assert.deepEqual(parseHash("#s=abc="), { s: "abc=", other: {} });
  assert.deepEqual(parseHash("#more=x&s=abc"), { s: "abc", other: { more: "x" } });
  assert.deepEqual(parseHash("#gist=0123abcd"), { gist: { id: "0123abcd", rev: undefined }, other: {} });
  assert.deepEqual(parseHash("#gist=0123abcd/ff00ee").gist, { id: "0123abcd", rev: "ff00ee" });
  assert.equal(parseHash("#gist=../etc").gist, undefined);
  const both = parseHash("#s=abc&gist=g1");
  assert.equal(both.gist?.id, "g1");
  assert.equal(gistHash("g1", "r2"), "#gist=g1/r2");
  assert.equal(gistHash("g1"), "#gist=g1");
  assert.deepEqual(parseHash(""), { other: {} });
});

test("envList: drops # lines and blank lines; null when nothing is left", () => {
  assert.deepEqual(envList("A=1\n# c\n\nB=2\r\n"), ["A=1", "B=2"]);
  assert.equal(envList(""), null);
  assert.equal(envList("# only a comment\n"), null);
});
