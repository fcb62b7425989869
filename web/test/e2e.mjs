// Browser test of the pe web page: Debian's chromium driven by playwright-core (no downloaded browser).
//
//   PE_URL=http://127.0.0.1:8080 PE_GIST_ID=abc PE_GIST_EXPECT='hello from gist' node test/e2e.mjs
//
// env: PE_URL (base URL of a running `pe serve`, required), PE_GIST_ID + PE_GIST_EXPECT (a gist the
// server's GitHub API serves and a line its run prints; step 3 is skipped without them),
// PE_SCREENSHOT_DIR (write pe-desktop.png / pe-phone.png there), PE_CHROMIUM (default /usr/bin/chromium),
// PE_RUN_TIMEOUT_MS (default 120000: runs are VMs, under emulation 5–20 s each),
// PE_GIST_TOKEN (when set, step 6 saves a gist through the config's github_api with this token; only
// for a fake GitHub API such as test/devserver.mjs's), PE_E2E_ONLY=live (run step 7 alone).

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const BASE = (process.env.PE_URL || "").replace(/\/+$/, "");
const GIST = process.env.PE_GIST_ID || "";
const GIST_EXPECT = process.env.PE_GIST_EXPECT || "";
const SHOTS = process.env.PE_SCREENSHOT_DIR || "";
const RUN_TIMEOUT = Number(process.env.PE_RUN_TIMEOUT_MS || 120000);
if (!BASE) {
  console.error("e2e: set PE_URL to the base URL of a running `pe serve`");
  process.exit(2);
}

const marker = `pe-e2e-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
let step = "start";
const log = (m) => console.log(`e2e: ${m}`);
function fail(msg) {
  throw new Error(`${step}: ${msg}`);
}

const browser = await chromium.launch({
  executablePath: process.env.PE_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const consoleErrors = [];

async function openPage(url, ctx = context) {
  const page = await ctx.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(`${url}: ${m.text()}${m.location()?.url ? ` (${m.location().url})` : ""}`);
  });
  page.on("pageerror", (e) => consoleErrors.push(`${url}: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 30000 });
  return page;
}

/** The visible input file tabs, in order. */
const fileNames = (page) => page.$$eval("#file-tabs [role=tab]", (ts) => ts.map((t) => t.dataset.key));
/** Text of the file open in the editor. */
const editorText = (page) => page.$$eval("#editor .cm-line", (ls) => ls.map((l) => l.textContent).join("\n"));

async function selectFile(page, name) {
  await page.click(`#file-tabs [role=tab][data-key="${name}"]`);
  await page.waitForFunction((n) => document.querySelector("#file-tabs [aria-selected=true]")?.dataset.key === n, name);
}

async function setEditorText(page, text) {
  await page.click("#editor .cm-content");
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(text);
  const got = await editorText(page);
  if (got !== text) fail(`editor holds ${JSON.stringify(got)}, wanted ${JSON.stringify(text)}`);
}

/** Waits until the status line says the run finished; returns {status, stdout}. */
async function waitRun(page, { expectStdout, expectStatus = "exit 0" }) {
  const t0 = Date.now();
  try {
    await page.waitForFunction(() => document.getElementById("status").dataset.state === "pending", null, { timeout: 10000 });
  } catch {
    /* a very fast run may already be done */
  }
  await page.waitForFunction(() => ["done", "error"].includes(document.getElementById("status").dataset.state), null, { timeout: RUN_TIMEOUT });
  const status = await page.textContent("#status");
  await selectOutput(page, "stdout");
  const stdout = await page.textContent("#out-panel");
  log(`  run took ${((Date.now() - t0) / 1000).toFixed(1)} s: ${status}`);
  if (!status.includes(expectStatus)) {
    const stderr = await selectOutput(page, "stderr").then(() => page.textContent("#out-panel"));
    fail(`status ${JSON.stringify(status)} lacks ${JSON.stringify(expectStatus)}; stdout ${JSON.stringify(stdout)}; stderr ${JSON.stringify(stderr)}`);
  }
  if (expectStdout && !stdout.includes(expectStdout)) fail(`stdout ${JSON.stringify(stdout)} lacks ${JSON.stringify(expectStdout)}`);
  return { status, stdout };
}

async function selectOutput(page, name) {
  const tab = await page.$(`#out-tabs [role=tab][data-key="${name}"]`);
  if (!tab) fail(`no output tab ${name}`);
  await tab.click();
}

// 7. Live output: a line printed before a 3 s sleep is on the page while the run still goes on.
async function liveStep() {
  step = "7 live output";
  log(`step ${step}`);
  const lp = await openPage(`${BASE}/`);
  await lp.fill("#cmd", "sh test.sh");
  await selectFile(lp, "test.sh");
  await setEditorText(lp, `echo ${marker}-first\necho ${marker}-err >&2\nsleep 3\necho ${marker}-second\n`);
  await lp.click("#run");
  const t0 = Date.now();
  await lp.waitForFunction((m) => document.getElementById("out-panel").textContent.includes(m), `${marker}-first`, { timeout: RUN_TIMEOUT });
  const shown = Date.now();
  const seen = await lp.evaluate(() => ({ state: document.getElementById("status").dataset.state, out: document.getElementById("out-panel").textContent }));
  if (seen.state !== "pending") fail(`the first line came with the result (status ${seen.state}), not before it`);
  if (seen.out.includes(`${marker}-second`)) fail("the line after the sleep came with the first one: the output was not streamed");
  // stderr's tab shows it has output, while the run goes on
  await lp.waitForFunction(() => !document.querySelector('#out-tabs [data-key="stderr"]').classList.contains("empty"), null, { timeout: 2500 })
    .catch(() => fail("the stderr tab did not get the line written to stderr before the sleep"));
  if ((await lp.getAttribute("#status", "data-state")) !== "pending") fail("the run ended before its stderr line was shown");
  log(`  first line shown ${((shown - t0) / 1000).toFixed(1)} s after Run, while running`);
  await waitRun(lp, { expectStdout: `${marker}-second` });
  const after = Date.now() - shown;
  if (after < 1500) fail(`the run ended ${after} ms after the first line was shown: the line did not come before the sleep`);
  const out = await lp.textContent("#out-panel");
  if (!out.includes(`${marker}-first\n${marker}-second`)) fail(`stdout after the run ${JSON.stringify(out)}`);
  await selectOutput(lp, "stderr");
  if (!(await lp.textContent("#out-panel")).includes(`${marker}-err`)) fail("stderr tab lacks the stderr line after the run");
  await lp.close();
}

async function main() {
  if (process.env.PE_E2E_ONLY === "live") return liveStep();
  // 1. Edit test.sh, run with the button, then again with Ctrl+Enter.
  step = "1 edit and run";
  log(`step ${step} (marker ${marker})`);
  const page = await openPage(`${BASE}/`);
  const files = await fileNames(page);
  if (!files.includes("test.sh")) fail(`default files ${JSON.stringify(files)} lack test.sh`);
  const image = await page.inputValue("#image");
  if (!image) fail("image field is empty");
  await page.fill("#cmd", "sh test.sh");
  await selectFile(page, "test.sh");
  await setEditorText(page, `echo ${marker}\necho to-stderr >&2\necho out > /run/pe/output/result.txt\n`);
  await page.click("#run");
  await waitRun(page, { expectStdout: marker });
  const outTabs = await page.$$eval("#out-tabs [role=tab]", (ts) => ts.map((t) => t.dataset.key));
  if (outTabs[0] !== "stdout" || outTabs[1] !== "stderr") fail(`output tabs ${JSON.stringify(outTabs)} do not start with stdout, stderr`);
  if (!outTabs.includes("file:result.txt")) fail(`output tabs ${JSON.stringify(outTabs)} lack result.txt`);
  await selectOutput(page, "stderr");
  if (!(await page.textContent("#out-panel")).includes("to-stderr")) fail("stderr tab lacks to-stderr");

  log("  again with Ctrl+Enter");
  await setEditorText(page, `echo ${marker}-again\n`);
  await page.keyboard.press("Control+Enter"); // focus is in the editor
  await waitRun(page, { expectStdout: `${marker}-again` });

  // 2. Share, then open the link in a new page: same files, command, image.
  step = "2 share and reload";
  log(`step ${step}`);
  await page.fill("#cmd", `sh test.sh  # ünïcødé ✓`); // non-Latin-1 text must survive the link
  await page.fill("#cmd", "sh test.sh");
  await selectFile(page, "folder/data.txt");
  await setEditorText(page, "data ünïcødé ✓ 🚀\n");
  await page.click("#share");
  await page.waitForFunction(() => !document.getElementById("share-box").hidden && document.getElementById("share-url").value.includes("#s="));
  const shared = await page.inputValue("#share-url");
  if (page.url() !== shared) fail(`location ${page.url()} differs from the shared link ${shared}`);
  const msg = await page.textContent("#share-msg");
  if (!msg) fail("no confirmation after Share");
  const before = { files: await fileNames(page), cmd: await page.inputValue("#cmd"), image: await page.inputValue("#image") };
  const page2 = await openPage(shared);
  const after = { files: await fileNames(page2), cmd: await page2.inputValue("#cmd"), image: await page2.inputValue("#image") };
  if (JSON.stringify(before) !== JSON.stringify(after)) fail(`state differs after reload: ${JSON.stringify(before)} vs ${JSON.stringify(after)}`);
  await selectFile(page2, "folder/data.txt");
  const data = await editorText(page2);
  if (data !== "data ünïcødé ✓ 🚀\n") fail(`folder/data.txt reloaded as ${JSON.stringify(data)}`);
  await selectFile(page2, "test.sh");
  if ((await editorText(page2)) !== `echo ${marker}-again\n`) fail("test.sh differs after reload");
  await page2.reload();
  await page2.waitForSelector("body[data-ready=true]");
  if (JSON.stringify(await fileNames(page2)) !== JSON.stringify(before.files)) fail("files differ after a second reload");
  await page2.close();

  // A binary file in a link is shown as such (not in the editor).
  const bin = Buffer.from(JSON.stringify({ cmd: "ls", stdin: null, env: "", image: before.image, files: [{ p: "t.txt", s: "x" }, { p: "blob.bin", b: "AAECAwT/" }] })).toString("base64");
  const bp = await openPage(`${BASE}/#s=${bin}`);
  await selectFile(bp, "blob.bin");
  await bp.waitForSelector("#binary-view:not([hidden])");
  const bv = await bp.textContent("#binary-view");
  if (!bv.includes("binary, 6 bytes") || !bv.includes("00 01 02 03 04 ff")) fail(`binary file shown as ${JSON.stringify(bv)}`);
  if (!(await bp.isHidden("#editor"))) fail("editor visible for a binary file");
  // rename with the keyboard: the text survives, the name is checked
  await selectFile(bp, "t.txt");
  await bp.focus("#rename-file");
  await bp.keyboard.press("Enter");
  await bp.waitForSelector("#dlg[open]");
  await bp.keyboard.press("Control+A");
  await bp.keyboard.type("blob.bin");
  await bp.keyboard.press("Enter");
  if (!(await bp.textContent("#dlg-error")).includes("already exists")) fail("rename accepted a duplicate name");
  await bp.keyboard.press("Control+A");
  await bp.keyboard.type("src/main.c");
  await bp.keyboard.press("Enter");
  await bp.waitForFunction(() => !document.getElementById("dlg").open && document.querySelector("#file-tabs [aria-selected=true]")?.dataset.key === "src/main.c");
  const renamed = JSON.stringify(await fileNames(bp));
  if (renamed !== '["src/main.c","blob.bin"]') fail(`after rename: ${renamed}`);
  if ((await editorText(bp)) !== "x") fail("rename lost the text");
  await bp.close();

  // 3. A gist link served by the (fake) GitHub API behind the server.
  step = "3 gist";
  if (GIST) {
    log(`step ${step} (#gist=${GIST})`);
    const gp = await openPage(`${BASE}/#gist=${GIST}`);
    await gp.waitForSelector("#gist-info:not([hidden])", { timeout: 30000 });
    const gfiles = await fileNames(gp);
    if (gfiles.length === 0) fail("no files loaded from the gist");
    if (gfiles.includes("pe.toml")) fail("pe.toml was loaded as an input file");
    const gcmd = await gp.inputValue("#cmd");
    log(`  files ${JSON.stringify(gfiles)}, command ${JSON.stringify(gcmd)}`);
    const st = await gp.getAttribute("#status", "data-state");
    if (st === "error") fail(`status after loading: ${await gp.textContent("#status")}`);
    const pinned = await gp.getAttribute("#gist-pinned", "href");
    if (!pinned || !pinned.includes(`#gist=${GIST}/`)) fail(`no pinned revision link (got ${pinned})`);
    await gp.click("#run");
    await waitRun(gp, { expectStdout: GIST_EXPECT, expectStatus: "done:" });
    // the pinned link loads the same files
    const pp = await openPage(pinned);
    await pp.waitForSelector("#gist-info:not([hidden])", { timeout: 30000 });
    if (JSON.stringify(await fileNames(pp)) !== JSON.stringify(gfiles)) fail("pinned revision link loads other files");
    await pp.close();
    await gp.close();
  } else log(`step ${step}: skipped (PE_GIST_ID not set)`);

  // 4. Keyboard only: Tab to Run, Enter runs; Escape then Tab leaves the editor.
  step = "4 keyboard";
  log(`step ${step}`);
  const kp = await openPage(`${BASE}/`);
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await kp.keyboard.press("Tab");
    reached = await kp.evaluate(() => document.activeElement?.id === "run");
  }
  if (!reached) fail("Tab never reached the Run button");
  await kp.keyboard.press("Enter");
  await waitRun(kp, { expectStatus: "exit 0" });
  if (SHOTS) {
    // the example as it ships, after a run: the docs' desktop screenshot
    mkdirSync(SHOTS, { recursive: true });
    await kp.screenshot({ path: join(SHOTS, "pe-desktop.png") });
    log(`  wrote ${join(SHOTS, "pe-desktop.png")}`);
  }
  // the editor must not trap Tab
  await kp.click("#editor .cm-content");
  await kp.keyboard.press("Escape");
  await kp.keyboard.press("Tab");
  const left = await kp.evaluate(() => !document.getElementById("editor").contains(document.activeElement));
  if (!left) fail("Escape then Tab did not move focus out of the editor");
  // arrow keys move between file tabs
  await kp.focus("#file-tabs [aria-selected=true]");
  const first = await kp.evaluate(() => document.activeElement?.dataset.key);
  await kp.keyboard.press("ArrowRight");
  const second = await kp.evaluate(() => document.activeElement?.dataset.key);
  if (!second || second === first) fail("ArrowRight did not move to the next file tab");
  await kp.close();

  // 5. Phone-sized screenshot.
  step = "5 phone";
  if (SHOTS) {
    log(`step ${step}`);
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const pp = await openPage(`${BASE}/`, phone);
    const overflow = await pp.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) fail(`page is ${overflow}px wider than the phone screen`);
    await pp.click("#run");
    await waitRun(pp, { expectStatus: "exit 0" });
    await pp.screenshot({ path: join(SHOTS, "pe-phone.png"), fullPage: true });
    log(`  wrote ${join(SHOTS, "pe-phone.png")}`);
    await phone.close();
  } else log(`step ${step}: skipped (PE_SCREENSHOT_DIR not set)`);

  // 6. Save as gist (only against a fake GitHub API): delete, create files through the dialogs, save, reload.
  step = "6 save as gist";
  if (process.env.PE_GIST_TOKEN) {
    log(`step ${step}`);
    const sp = await openPage(`${BASE}/`);
    await selectFile(sp, "folder/data.txt");
    await sp.click("#delete-file");
    await sp.click("#dlg-ok");
    if ((await fileNames(sp)).includes("folder/data.txt")) fail("Delete did not delete");
    await sp.click("#new-file");
    await sp.fill("#dlg-input", "test.sh");
    await sp.click("#dlg-ok");
    if (!(await sp.textContent("#dlg-error")).includes("already exists")) fail("New accepted a duplicate name");
    await sp.fill("#dlg-input", "extra.txt");
    await sp.keyboard.press("Enter");
    await sp.waitForFunction(() => document.querySelector("#file-tabs [aria-selected=true]")?.dataset.key === "extra.txt");
    await sp.keyboard.insertText(`extra ${marker}\n`);
    await sp.click("#save-gist");
    await sp.fill("#gist-token", process.env.PE_GIST_TOKEN);
    await sp.click("#gist-ok");
    await sp.waitForFunction(() => /#gist=[\w-]+\/[\w-]+$/.test(location.hash), null, { timeout: 30000 }).catch(async () => fail(`no gist link; dialog says ${JSON.stringify(await sp.textContent("#gist-error"))}`));
    const saved = sp.url();
    log(`  saved as ${saved}`);
    const lp = await openPage(saved);
    await lp.waitForSelector("#gist-info:not([hidden])");
    const lf = await fileNames(lp);
    if (JSON.stringify(lf) !== JSON.stringify(["extra.txt", "test.sh"])) fail(`saved gist loads files ${JSON.stringify(lf)}`);
    if ((await lp.inputValue("#cmd")) !== "sh test.sh") fail("saved gist lost the command");
    await selectFile(lp, "extra.txt");
    if ((await editorText(lp)) !== `extra ${marker}\n`) fail("saved gist lost extra.txt's text");
    await lp.close();
    await sp.close();
  } else log(`step ${step}: skipped (PE_GIST_TOKEN not set)`);

  await liveStep();

  const relevant = consoleErrors.filter((e) => !/favicon/.test(e));
  if (relevant.length) fail(`browser console errors:\n  ${relevant.join("\n  ")}`);
}

try {
  await main();
  console.log("e2e: all steps passed");
  await browser.close();
} catch (e) {
  console.error(`e2e: FAILED: ${e.message}`);
  await browser.close();
  process.exit(1);
}
