// Drives the playground page in real headless Chromium (Debian's, through playwright-core)
// and prints what the page saw as one JSON line; test_playground.py makes the assertions.
//
// The microphone is Chromium's fake capture device playing FAKE_AUDIO (a 16-bit PCM WAV,
// looped). Scenario: open PAGE_URL, pick AGENT, set CALL_ID, click Call, wait until the
// JavaScript expression WAIT_FOR (over `window.playground`) is true, take a screenshot, hang
// up; then, if TEXT is set, send it with the text box (outside a call: a text-only turn) and
// wait for an assistant line containing TEXT_REPLY.
//
// Env: CHROMIUM, PAGE_URL, AGENT, CALL_ID, FAKE_AUDIO, WAIT_FOR, SCREENSHOT, USER_DATA_DIR,
//      TIMEOUT_MS, TEXT, TEXT_REPLY.
// Output: `RESULT {"ok": bool, "error"?: str, "phase": str, "state": window.playground,
//          "console": [...]}`; exit status 0 when every step passed.

import { chromium } from "playwright-core";

const env = process.env;
const timeout = Number(env.TIMEOUT_MS || 60000);
const consoleLines = [];
let phase = "launch";
let page = null;

// Plain data only (the transcript entries are plain objects; no DOM nodes in there).
const snapshot = () => (page ? page.evaluate(() => window.playground || null) : null);

const context = await chromium.launchPersistentContext(env.USER_DATA_DIR, {
  executablePath: env.CHROMIUM,
  headless: true,
  timeout,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${env.FAKE_AUDIO}`,
  ],
});

let result;
try {
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));

  phase = "load";
  await page.goto(env.PAGE_URL);
  await page.waitForFunction(
    (agent) => [...document.querySelectorAll("#agent option")].some((o) => o.value === agent),
    env.AGENT,
  );
  await page.selectOption("#agent", env.AGENT);
  await page.fill("#call-id", env.CALL_ID);

  phase = "call";
  await page.click("#call");
  await page.waitForFunction(env.WAIT_FOR, null, { polling: 100 });
  await page.screenshot({ path: env.SCREENSHOT, fullPage: true });

  phase = "hang up";
  await page.click("#call");
  await page.waitForFunction(
    () => !window.playground.inCall && window.playground.status === "idle",
    null, { polling: 50 },
  );

  if (env.TEXT) {
    phase = "text message";
    await page.fill("#text", env.TEXT);
    await page.click("#text-form button");
    await page.waitForFunction(
      (want) => window.playground.transcript.some(
        (l) => l.role === "assistant" && l.text.includes(want)),
      env.TEXT_REPLY, { polling: 50 },
    );
  }
  result = { ok: true, phase, state: await snapshot() };
} catch (err) {
  let state = null;
  try {
    state = await snapshot();
    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
  } catch { /* the page is gone */ }
  result = { ok: false, error: String(err && err.message || err), phase, state };
} finally {
  await context.close().catch(() => {});
}
result.console = consoleLines;
console.log("RESULT " + JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
