// Runs e2e.mjs against test/devserver.mjs (canned API, no VMs): a quick check of the page alone.
//   node test/e2e-dev.mjs        (PE_SCREENSHOT_DIR is passed through)
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dev = spawn(process.execPath, [join(here, "devserver.mjs"), "--port", "0"], {
  env: { ...process.env, DEV_DELAY_MS: process.env.DEV_DELAY_MS ?? "400" },
  stdio: ["ignore", "pipe", "inherit"],
});
const url = await new Promise((resolve, reject) => {
  let buf = "";
  dev.stdout.on("data", (d) => {
    buf += d;
    const m = /http:\/\/[\d.]+:\d+/.exec(buf);
    if (m) resolve(m[0]);
  });
  dev.on("exit", (c) => reject(new Error(`devserver exited (${c})`)));
  setTimeout(() => reject(new Error("devserver did not start in 20 s")), 20000);
});
const e2e = spawn(process.execPath, [join(here, "e2e.mjs")], {
  env: { ...process.env, PE_URL: url, PE_GIST_ID: "demo0001", PE_GIST_EXPECT: "gist says hi", PE_GIST_TOKEN: "dev-token" },
  stdio: "inherit",
});
const code = await new Promise((r) => e2e.on("exit", (c) => r(c ?? 1)));
dev.kill();
process.exit(code);
