// The pe.toml test vectors the Go parser reads too (gist/testdata/petoml/README.md): what
// parsePeToml makes of each, in the vectors' shape, must be the expected JSON.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parsePeToml, PeFields, PeTomlError } from "../../src/petoml";
import { shellSplit } from "../../src/shell";
import { envList } from "../../src/urlstate";

// The compiled test runs from web/build-test/.
const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "gist", "testdata", "petoml");

/** f in the vectors' shape: argument vectors split as the page splits them, env as the page sends it. */
function vectorOf(f: PeFields): Record<string, unknown> {
  const v: Record<string, unknown> = {};
  if (f.image !== undefined) v.image = f.image;
  if (f.cmd) v.cmd = shellSplit(f.cmd);
  if (f.entrypoint !== undefined) v.entrypoint = shellSplit(f.entrypoint);
  const env = f.env === undefined ? null : envList(f.env);
  if (env) v.env = env;
  for (const k of ["stdin", "timeout", "memory", "platform"] as const) {
    if (f[k] !== undefined && f[k] !== "") v[k] = f[k];
  }
  return v;
}

const files = readdirSync(dir).filter((n) => n.endsWith(".toml"));

test("the vectors are there", () => {
  assert.ok(files.length >= 10, `${files.length} vectors in ${dir}`);
});

for (const name of files) {
  test(`pe.toml vector ${name}`, () => {
    const text = readFileSync(join(dir, name), "utf8");
    const want = JSON.parse(readFileSync(join(dir, name.replace(/\.toml$/, ".json")), "utf8"));
    if ("error" in want) {
      assert.throws(
        () => parsePeToml(text),
        (e: unknown) => e instanceof PeTomlError && (want.error === "" || e.message.includes(want.error)),
        `want an error about "${want.error}"`,
      );
      return;
    }
    assert.deepEqual(vectorOf(parsePeToml(text)), want);
  });
}
