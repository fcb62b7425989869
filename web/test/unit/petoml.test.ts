import { test } from "node:test";
import assert from "node:assert/strict";
import { parseToml } from "../../src/toml";
import { parsePeToml, formatPeToml, PeFields } from "../../src/petoml";

test("the original's pe.toml (string fields)", () => {
  const f = parsePeToml(`# comment
image = "docker.io/library/gcc:14"
cmd = "sh -c 'gcc main.c && ./a.out'"
env = """
FOO=bar
# ignored later
"""
stdin = 'input.txt'
`);
  assert.deepEqual(f, {
    image: "docker.io/library/gcc:14",
    cmd: "sh -c 'gcc main.c && ./a.out'",
    env: "FOO=bar\n# ignored later\n",
    stdin: "input.txt",
  });
});

test("pe's extensions: arrays, env table, entrypoint, timeout, memory, platform", () => {
  const f = parsePeToml(`image = "busybox"
cmd = ["sh", "-c", "echo 'a b'"]   # trailing comment
entrypoint = []
timeout = "5s"
memory = 256
platform = "linux/amd64"

[env]
GREETING = "hello world"
N = 3
DEBUG = true
`);
  assert.equal(f.cmd, `sh -c 'echo '\\''a b'\\'''`);
  assert.equal(f.entrypoint, "");
  assert.equal(f.env, "GREETING=hello world\nN=3\nDEBUG=true");
  assert.equal(f.timeout, "5s");
  assert.equal(f.memory, 256);
  assert.equal(f.platform, "linux/amd64");
});

test("unknown keys and wrong types are errors that name key and line", () => {
  assert.throws(() => parsePeToml('image = "x"\n\nimagee = "y"\n'), /line 3: unknown key "imagee"/);
  assert.throws(() => parsePeToml("image = 5\n"), /line 1: "image" must be a string/);
  assert.throws(() => parsePeToml('cmd = ["a", 1]\n'), /"cmd" must be a string or an array of strings/);
  assert.throws(() => parsePeToml("env = [1]\n"), /"env" must be/);
  assert.throws(() => parsePeToml("[other]\nx = 1\n"), /line 1: unknown key "other"/);
});

test("TOML syntax errors carry the line", () => {
  const bad: Array<[string, RegExp]> = [
    ['image = "x\n', /line 1: unterminated string/],
    ['a = 1\nb = "x" y\n', /line 2: unexpected "y"/],
    ["a = 1\na = 2\n", /line 2: duplicate key "a"/],
    ["a = bare\n", /line 1: invalid value "bare"/],
    ["a = 1979-05-27\n", /dates and times are not supported/],
    ["[[t]]\n", /arrays of tables/],
    ['a = "\\q"\n', /bad escape/],
    ["a = [1, 2\n", /expected , or \]/],
    ["= 1\n", /expected a key/],
    ["[t]\n[t]\n", /line 2: table \[t\] defined twice/],
    ["a = 01\n", /leading zero/],
    ["a = 'x\ny'\n", /unterminated literal string/],
  ];
  for (const [src, re] of bad) assert.throws(() => parseToml(src), re, src);
});

test("TOML values", () => {
  const { table, lines } = parseToml(`s1 = "tab\\there \\u00e9 \\U0001F680"
s2 = 'C:\\path'
s3 = """\\
  joined \\
  line"""
s4 = '''
raw \\n'''
i = [1_000, -2, 0x1f, 0o17, 0b101, +3]
f = [1.5, -2e3, 6.02e+23]
b = [true, false]
nested = [[1, 2], ["a"], ]
t = { a = 1, b.c = "d" }
"quoted key" = 1
dotted.key = "v"
`);
  assert.deepEqual(table, {
    s1: "tab\there é 🚀",
    s2: "C:\\path",
    s3: "joined line",
    s4: "raw \\n",
    i: [1000, -2, 31, 15, 5, 3],
    f: [1.5, -2000, 6.02e23],
    b: [true, false],
    nested: [[1, 2], ["a"]],
    t: { a: 1, b: { c: "d" } },
    "quoted key": 1,
    dotted: { key: "v" },
  });
  assert.equal(lines.get("i"), 8);
  assert.equal(lines.get("dotted"), 14);
});

test("formatPeToml round trips through parsePeToml", () => {
  const cases: PeFields[] = [
    { image: "busybox", cmd: "sh test.sh" },
    { image: 'we"ird\\ref', cmd: "sh -c 'echo \"x\"'", entrypoint: "/bin/sh -c", env: "A=1\nB=ü ✓\n", stdin: "in.txt", timeout: "5s", memory: 512 },
    { image: "x", env: "TRICKY='''\n" },
    { image: "x", env: "ENDS_WITH_QUOTE='\n" },
    { image: "x", env: "CTRL=\u0001\n" },
  ];
  for (const c of cases) assert.deepEqual(parsePeToml(formatPeToml(c)), c, JSON.stringify(c));
});
