import { test } from "node:test";
import assert from "node:assert/strict";
import { describeResult, durationMs, refPath, runBody, RunResult, RunResponse } from "../../src/api";
import { unframe, unpack } from "../../src/pearchive";

const result = (r: RunResponse): RunResult => ({ response: r, stdout: new Uint8Array(), stderr: new Uint8Array(), files: [], elapsed: 1234.4 });

test("status line texts", () => {
  assert.equal(describeResult(result({ kind: "Ok", siginfo: { Exited: 0 }, exit_code: 0, duration_ms: 812 })), "done: exit 0 in 812 ms");
  assert.equal(describeResult(result({ kind: "Ok", siginfo: { Exited: 3 } })), "done: exit 3 in 1234 ms");
  assert.equal(describeResult(result({ kind: "Ok", siginfo: { Killed: 9 }, duration_ms: 5 })), "killed by signal 9 after 5 ms");
  assert.equal(describeResult(result({ kind: "Overtime", siginfo: { Killed: 9 }, timed_out: true, duration_ms: 10000 })), "timed out after 10000 ms");
  assert.equal(describeResult(result({ kind: "Panic", message: "crun failed" })), "failed: crun failed");
  assert.equal(
    describeResult(result({ kind: "Ok", exit_code: 0, duration_ms: 1, stdout_truncated: true, stderr_truncated: true, output_truncated: true })),
    "done: exit 0 in 1 ms, stdout truncated, stderr truncated, output files truncated",
  );
});

test("image references keep / : @ in the path and escape the rest", () => {
  assert.equal(refPath("docker.io/library/busybox@sha256:0864"), "docker.io/library/busybox@sha256:0864");
  assert.equal(refPath("gcc:14"), "gcc:14");
  assert.equal(refPath("s3://images/ce/clang:20"), "s3:%2F%2Fimages/ce/clang:20");
  assert.equal(refPath("a b#c?d"), "a%20b%23c%3Fd");
});

test("request body: framing of the JSON request and the input archive", () => {
  const body = runBody({ cmd: ["sh", "test.sh"], entrypoint: null, env: null, stdin: null }, [{ path: "test.sh", data: "echo hi\n" }]);
  const { json, archive } = unframe(body);
  assert.deepEqual(json, { cmd: ["sh", "test.sh"], entrypoint: null, env: null, stdin: null });
  assert.deepEqual(unpack(archive), [{ path: "test.sh", data: new TextEncoder().encode("echo hi\n") }]);
});

test("pe.toml timeouts become timeout_ms", () => {
  assert.equal(durationMs(5), 5000);
  assert.equal(durationMs("500ms"), 500);
  assert.equal(durationMs("1m30s"), 90000);
  assert.equal(durationMs("2.5s"), 2500);
  assert.equal(durationMs("soon"), undefined);
  assert.equal(durationMs("-3s"), undefined);
  assert.equal(durationMs(undefined), undefined);
});

test("a streamed result reads as the batch answer", async () => {
  const { resultOf } = await import("../../src/api");
  const json = resultOf({ kind: "Ok", stdout: "hé\n", stderr: "" }, null, 5);
  assert.deepEqual(new TextDecoder().decode(json.stdout), "hé\n");
  assert.equal(json.files.length, 0);
  const { pack } = await import("../../src/pearchive");
  const ar = pack([
    { path: "stdout", data: "out\n" },
    { path: "stderr", data: "err\n" },
    { path: "dir/r.txt", data: "file\n" },
  ]);
  const withFiles = resultOf({ kind: "Ok" }, ar, 5);
  const dec = new TextDecoder();
  assert.deepEqual(
    [dec.decode(withFiles.stdout), dec.decode(withFiles.stderr), withFiles.files.map((f) => [f.name, dec.decode(f.data)])],
    ["out\n", "err\n", [["r.txt", "file\n"]]],
  );
});
