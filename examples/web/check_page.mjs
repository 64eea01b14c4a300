// Drive the page in headless Chromium: wait for the first batch, press "generate", and print what happened as JSON.
//
//   node check_page.mjs http://127.0.0.1:PORT/ [--screenshot page.png]
//
// Uses the machine's Chromium (CHROMIUM_PATH, default /usr/bin/chromium) through playwright-core: no browser
// download. Prints {consoleErrors, pageErrors, failedRequests, generations, seeds, canvas, noise, ...} on stdout;
// tests/test_examples.py judges it (non-blank canvas, fresh characters, pixels equal to Python onnxruntime's).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

const url = process.argv[2];
const screenshotAt = process.argv.indexOf("--screenshot");
const screenshot = screenshotAt > 0 ? process.argv[screenshotAt + 1] : null;
if (!url) {
  console.error("usage: node check_page.mjs URL [--screenshot FILE]");
  process.exit(2);
}
const TIMEOUT_MS = Number(process.env.PAGE_TIMEOUT_MS ?? 60_000);

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kmnist-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  headless: true,
  // The background-networking flags keep Chromium from calling Google's hosts, which this machine cannot reach.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const result = { consoleErrors: [], consoleWarnings: [], pageErrors: [], failedRequests: [] };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => {
    if (message.type() === "error") result.consoleErrors.push(message.text());
    if (message.type() === "warning") result.consoleWarnings.push(message.text());
  });
  page.on("pageerror", (error) => result.pageErrors.push(String(error)));
  page.on("requestfailed", (request) => result.failedRequests.push(`${request.url()}: ${request.failure()?.errorText}`));
  page.on("response", (response) => {
    if (response.status() >= 400) result.failedRequests.push(`${response.url()}: HTTP ${response.status()}`);
  });

  try {
    await page.goto(url);
    // The page generates a first batch by itself, then the test presses the button once.
    await page.waitForFunction(() => ["generated", "error"].includes(window.kmnist?.phase), null,
      { timeout: TIMEOUT_MS });
    result.firstSeed = await page.evaluate(() => window.kmnist.seed);
    if ((await page.evaluate(() => window.kmnist.phase)) === "generated") {
      await page.getByRole("button", { name: "generate" }).click();
      await page.waitForFunction(() => window.kmnist.generations >= 2 || window.kmnist.phase === "error", null,
        { timeout: TIMEOUT_MS });
    }
  } catch (error) {
    result.driverError = String(error); // reported with whatever the page shows, not thrown: the JSON says more
  }
  Object.assign(result, await page.evaluate(() => {
    const canvas = document.getElementById("canvas");
    const { width, height } = canvas;
    const rgba = width && height ? canvas.getContext("2d").getImageData(0, 0, width, height).data : [];
    const gray = [];
    for (let i = 0; i < rgba.length; i += 4) gray.push(rgba[i]);
    const { phase, generations, seed, noise, latentDim, layout } = window.kmnist ?? {};
    return {
      phase, generations, seed, noise, latentDim, layout,
      status: document.getElementById("status").textContent,
      canvas: { width, height, gray },
    };
  }));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
