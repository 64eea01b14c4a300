// Drive the page in headless Chromium: wait for the first batch, press "generate" (or, with --label, the button of
// that class), and print what happened as JSON.
//
//   node check_page.mjs http://127.0.0.1:PORT/ [--screenshot page.png] [--label つ] [--viewports 1000x800,390x844]
//
// Uses the machine's Chromium (CHROMIUM_PATH, default /usr/bin/chromium) through playwright-core: no browser
// download. Prints {consoleErrors, pageErrors, failedRequests, generations, seeds, canvas, noise, labels,
// classButtons, fit, ...} on stdout; tests/test_examples.py judges it (non-blank canvas, fresh characters, pixels
// equal to Python onnxruntime's). --viewports: the page is loaded at the first size, and after the clicks each size
// is set in turn and measured (fit: whether the page scrolls sideways).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

const url = process.argv[2];
function option(name) {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : null;
}
const screenshot = option("--screenshot");
const label = option("--label");
const viewports = (option("--viewports") ?? "").split(",").filter(Boolean).map((size) => {
  const [width, height] = size.split("x").map(Number);
  return { width, height };
});
if (!url || viewports.some(({ width, height }) => !(width > 0 && height > 0))) {
  console.error("usage: node check_page.mjs URL [--screenshot FILE] [--label LABEL] [--viewports WxH,WxH,...]");
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
  ...(viewports.length ? { viewport: viewports[0] } : {}),
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
    result.firstLabels = await page.evaluate(() => window.kmnist.labels);
    if ((await page.evaluate(() => window.kmnist.phase)) === "generated") {
      // A class button's name is its character and romanized name ("つ tsu"): --label gives the character.
      await page.getByRole("button", label ? { name: label } : { name: "generate", exact: true }).click();
      await page.waitForFunction(() => window.kmnist.generations >= 2 || window.kmnist.phase === "error", null,
        { timeout: TIMEOUT_MS });
    }
    result.fit = [];
    for (const viewport of viewports) {
      await page.setViewportSize(viewport);
      await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
      result.fit.push({ viewport, ...(await page.evaluate(() => ({
        innerWidth: window.innerWidth,
        scrollWidth: document.documentElement.scrollWidth,
        canvasWidth: document.getElementById("canvas").getBoundingClientRect().width,
        canvasHeight: document.getElementById("canvas").getBoundingClientRect().height,
      }))) });
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
    const { phase, generations, seed, noise, latentDim, layout, labels, label, classNames } = window.kmnist ?? {};
    const group = document.getElementById("classes");
    return {
      phase, generations, seed, noise, latentDim, layout, labels, label, classNames,
      status: document.getElementById("status").textContent,
      canvas: { width, height, gray },
      classesShown: Boolean(group && !group.hidden && group.getBoundingClientRect().height > 0),
      classButtons: [...(group?.querySelectorAll("button") ?? [])].map((button) => ({
        text: button.textContent, pressed: button.getAttribute("aria-pressed"),
      })),
    };
  }));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
