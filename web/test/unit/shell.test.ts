import { test } from "node:test";
import assert from "node:assert/strict";
import { shellSplit, shellQuote, shellJoin } from "../../src/shell";

test("shellSplit", () => {
  const cases: Array<[string, string[]]> = [
    ["", []],
    ["  sh   test.sh  ", ["sh", "test.sh"]],
    ["echo 'a b' \"c d\"", ["echo", "a b", "c d"]],
    ["sh -c 'echo \"$HOME\" | wc -c'", ["sh", "-c", 'echo "$HOME" | wc -c']],
    ['echo "a\\"b" "\\$x" "\\n"', ["echo", 'a"b', "$x", "\\n"]],
    ["a\\ b c\\\\d", ["a b", "c\\d"]],
    ["x''y \"\"", ["xy", ""]],
    ["one\\\ntwo", ["onetwo"]],
    ["a\tb\nc", ["a", "b", "c"]],
    ["ünï 'cødé ✓'", ["ünï", "cødé ✓"]],
    ["gcc -O2 -o /run/pe/output/a.out main.c", ["gcc", "-O2", "-o", "/run/pe/output/a.out", "main.c"]],
  ];
  for (const [s, want] of cases) assert.deepEqual(shellSplit(s), want, s);
});

test("shellSplit errors", () => {
  assert.throws(() => shellSplit("echo 'x"), /unterminated single quote/);
  assert.throws(() => shellSplit('echo "x'), /unterminated double quote/);
  assert.throws(() => shellSplit("echo x\\"), /trailing backslash/);
});

test("shellQuote/shellJoin round trip", () => {
  const words = ["sh", "-c", "echo 'hi' && ls", "", "a b", "ü", "$HOME", "x\"y", "plain/path.txt"];
  assert.deepEqual(shellSplit(shellJoin(words)), words);
  assert.equal(shellQuote("plain"), "plain");
  assert.equal(shellQuote("it's"), "'it'\\''s'");
});
