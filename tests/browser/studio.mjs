// Loads the studio page in headless Chromium, uploads images, waits for every card to
// finish, turns on "Explain" and waits for the heat maps, screenshots the page and prints
// what it shows as one JSON line.
// The first image is dropped on the drop zone (a real `drop` event with a DataTransfer);
// the rest are picked with the file input.
// usage: node studio.mjs URL SCREENSHOT.png IMAGE...
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { chromium } from "playwright-core";

const [url, shot, ...images] = process.argv.slice(2);
if (!url || !shot || images.length === 0) {
  console.error("usage: node studio.mjs URL SCREENSHOT.png IMAGE...");
  process.exit(2);
}
// The flags this machine needs: no sandbox as root, and no background calls to the
// (closed) network.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  const outside = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) outside.push(r.url()); });

  await page.goto(url);
  await page.waitForSelector("#model[data-model]", { timeout: 30000 });
  const [dropped, ...picked] = images;
  const payload = { name: basename(dropped), b64: readFileSync(dropped).toString("base64") };
  const dataTransfer = await page.evaluateHandle(({ name, b64 }) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], name, { type: "image/png" }));
    return dt;
  }, payload);
  await page.dispatchEvent("#drop", "dragover", { dataTransfer });
  await page.dispatchEvent("#drop", "drop", { dataTransfer });
  if (picked.length) await page.setInputFiles("#file", picked);
  await page.waitForFunction(
    (n) => document.querySelectorAll('.card[data-state="done"], .card[data-state="error"]').length === n,
    images.length, { timeout: 120000 });
  await page.check("#explain");
  await page.waitForFunction(
    () => [...document.querySelectorAll('.card[data-state="done"]')]
      .every((c) => c.dataset.explained === "done" || c.dataset.explained === "error"),
    null, { timeout: 120000 });
  const cards = await page.$$eval(".card", (cs) => cs.map((c) => ({
    name: c.querySelector("h2").textContent,
    state: c.dataset.state,
    top1: c.dataset.top1 || null,
    ms: c.dataset.ms ? Number(c.dataset.ms) : null,
    bars: [...c.querySelectorAll(".bar")].map((b) => ({
      label: b.querySelector(".label").textContent,
      percent: b.querySelector(".pct").textContent,
      width: b.querySelector(".fill").style.width,
    })),
    error: c.querySelector(".error")?.textContent || null,
    canvas: [c.querySelector("canvas").width, c.querySelector("canvas").height],
    cam: (() => {
      const cam = c.querySelector("canvas.cam");
      if (!cam) return null;
      // The hottest cell as drawn: viridis gets brighter with the value.
      const px = cam.getContext("2d").getImageData(0, 0, cam.width, cam.height).data;
      let best = 0, bestLuma = -1;
      for (let i = 0; i < cam.width * cam.height; i++) {
        const luma = 0.299 * px[4 * i] + 0.587 * px[4 * i + 1] + 0.114 * px[4 * i + 2];
        if (luma > bestLuma) { bestLuma = luma; best = i; }
      }
      const r = cam.getBoundingClientRect();
      return {
        rows: c.camRows,
        drawnArgmax: [Math.floor(best / cam.width), best % cam.width],
        size: [cam.width, cam.height],
        shown: [Math.round(r.width), Math.round(r.height)],
        visible: !cam.hidden,
      };
    })(),
  })));
  const model = await page.textContent("#model");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ model, cards, pageErrors, outside }));
} finally {
  await browser.close();
}
