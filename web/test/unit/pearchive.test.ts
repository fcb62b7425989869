import { test } from "node:test";
import assert from "node:assert/strict";
import { pack, unpack, frame, unframe, ArchiveError, badPath } from "../../src/pearchive";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("pack matches the original's byte format (pack_to_vec)", () => {
  // one file "file1" with content "data1" is 01 66 69 6c 65 31 00 05 00 00 00 64 61 74 61 31
  assert.equal(hex(pack([{ path: "file1", data: "data1" }])), "0166696c65310005000000" + "6461746131");
});

test("directories are entered once and popped, in first-seen order", () => {
  const b = pack([
    { path: "a/x", data: "1" },
    { path: "top", data: "" },
    { path: "a/b/y", data: new Uint8Array([0, 255]) },
  ]);
  // Dir a, File x, Dir b, File y, Pop, Pop, File top
  assert.equal(hex(b), "026100" + "01780001000000" + "31" + "026200" + "0179000200000000ff" + "03" + "03" + "01746f700000000000");
  assert.deepEqual(unpack(b), [
    { path: "a", data: null },
    { path: "a/x", data: new TextEncoder().encode("1") },
    { path: "a/b", data: null },
    { path: "a/b/y", data: new Uint8Array([0, 255]) },
    { path: "top", data: new Uint8Array(0) },
  ]);
});

test("round trip of UTF-8 names and binary content", () => {
  const bin = new Uint8Array(300).map((_, i) => (i * 7) & 255);
  const files = [
    { path: "dossier/été ✓.txt", data: "ünïcødé 🚀\n" },
    { path: "bin/blob", data: bin },
  ];
  const got = unpack(pack(files)).filter((e) => e.data);
  assert.equal(got[0].path, "dossier/été ✓.txt");
  assert.equal(new TextDecoder().decode(got[0].data!), "ünïcødé 🚀\n");
  assert.deepEqual(got[1].data, bin);
});

test("pack refuses bad paths", () => {
  for (const p of ["", "/abs", "a//b", "a/../b", ".", "a/.", "x\0y", "n".repeat(256)]) {
    assert.throws(() => pack([{ path: p, data: "" }]), ArchiveError, p);
  }
  assert.throws(() => pack([{ path: "a", data: "" }, { path: "a", data: "" }]), /duplicate/);
  assert.throws(() => pack([{ path: "a", data: "" }, { path: "a/b", data: "" }]), /both a file and a directory/);
  assert.throws(() => pack([{ path: "a/b", data: "" }, { path: "a", data: "" }]), /both a file and a directory/);
  assert.equal(badPath("n".repeat(255)), null);
});

test("unpack rejects malformed archives with a message", () => {
  const cases: Array<[number[], RegExp]> = [
    [[1, 0x61], /not terminated/],
    [[1, 0, 0, 0, 0, 0], /empty name/],
    [[1, 0x61, 0, 5, 0, 0, 0, 1], /needs 5 bytes/],
    [[1, 0x61, 0, 5, 0], /truncated file size/],
    [[2, 0x61, 0], /ends inside directory/],
    [[3], /pop at top level/],
    [[9], /unknown tag 9/],
    [[2, 0x2e, 0x2e, 0, 3], /not allowed/],
    [[1, 0x61, 0x2f, 0x62, 0, 0, 0, 0, 0], /slash/],
    [[1, 0xff, 0, 0, 0, 0, 0], /UTF-8/],
    [[1, ...new Array(256).fill(0x61), 0, 0, 0, 0, 0], /longer than 255/],
  ];
  for (const [bytes, re] of cases) assert.throws(() => unpack(new Uint8Array(bytes)), re, JSON.stringify(bytes));
  let deep: number[] = [];
  for (let i = 0; i < 33; i++) deep = deep.concat([2, 0x64, 0]);
  assert.throws(() => unpack(new Uint8Array(deep)), /nested/);
  assert.deepEqual(unpack(new Uint8Array(0)), []);
});

test("framing: u32 LE json length, JSON, archive", () => {
  const arch = pack([{ path: "stdout", data: "hi\n" }]);
  const f = frame({ cmd: ["echo", "ü"] }, arch);
  const n = new DataView(f.buffer).getUint32(0, true);
  assert.equal(n, new TextEncoder().encode('{"cmd":["echo","ü"]}').length);
  const { json, archive } = unframe(f);
  assert.deepEqual(json, { cmd: ["echo", "ü"] });
  assert.deepEqual(archive, arch);
  assert.throws(() => unframe(new Uint8Array([1, 0])), /too short/);
  assert.throws(() => unframe(new Uint8Array([9, 0, 0, 0, 0x7b])), /exceeds/);
  assert.throws(() => unframe(new Uint8Array([1, 0, 0, 0, 0x7b])), /JSON/);
});
