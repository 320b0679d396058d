// Drives the all-in-one scan demo page (`pipeline-scan demo`) in headless
// Chromium: types an image URL, clicks Scan, waits until the page renders the
// terminal event, and prints what the page showed as one JSON object.
//
//   node tests/browser/scan_demo.mjs <base-url> <image-url> [screenshot.png]
//
// Output (stdout, one line):
//   {"ok":bool,"state":"done"|"failed"|..., "job":..., "status":...,
//    "rows":[{"event","stage","status","seq"}...],
//    "stages":{"vision":"completed",...},
//    "result":{"classification":...,"rules":...,"answer":...,"reward":...}}
// The page's own fetch + EventSource do all the work; this script only
// clicks and reads the DOM.

import { launch, emit, fail, pollUntil, screenshot } from "./lib.mjs";

const [base, imageUrl, shot] = process.argv.slice(2);
if (!base || !imageUrl) fail("usage: scan_demo.mjs <base-url> <image-url> [screenshot.png]");
const LIMIT_MS = Number(process.env.RELAY_BROWSER_LIMIT_MS || 45_000);

const { page, close } = await launch({ viewport: { width: 1200, height: 900 } });
const watchdog = setTimeout(async () => {
  emit({ ok: false, error: `overall limit of ${LIMIT_MS * 2} ms reached` });
  await close().catch(() => {});
  process.exit(1);
}, LIMIT_MS * 2);

try {
  await page.goto(base + "/", { waitUntil: "load" });
} catch (e) {
  fail(`cannot load the demo page: ${e.message}`);
}

await page.fill("#image-url", imageUrl);
await page.click("#submit");

const state = await pollUntil(
  () => page.evaluate(() => document.body.dataset.state || null),
  LIMIT_MS,
);

// Let any late (duplicate) event show up before reading the rows.
await new Promise((r) => setTimeout(r, 800));

const seen = await page.evaluate(() => {
  const text = (id) => {
    const e = document.getElementById(id);
    return e ? e.textContent.replace(/\s+/g, " ").trim() : null;
  };
  return {
    job: document.body.dataset.job || null,
    status: text("status"),
    rows: [...document.querySelectorAll("#rows tr.ev")].map((tr) => ({
      event: tr.children[2].textContent,
      stage: tr.dataset.stage,
      status: tr.dataset.status,
      seq: tr.dataset.seq === "" ? null : Number(tr.dataset.seq),
    })),
    stages: Object.fromEntries(
      [...document.querySelectorAll(".stage")].map((s) => [
        s.dataset.stage,
        s.classList.contains("completed") ? "completed" : s.classList.contains("failed") ? "failed" : s.classList.contains("running") ? "running" : "pending",
      ]),
    ),
    // Layout of the events table: every row is a table row whose cells sit
    // under the header's columns, with no decoration of its own (a row
    // styled by another element's CSS class shows up here).
    misaligned: (() => {
      const ths = [...document.querySelectorAll("#rows")[0].closest("table").querySelectorAll("thead th")];
      const headRow = ths[0].parentElement;
      const bad = [];
      for (const tr of document.querySelectorAll("#rows tr.ev")) {
        const cs = getComputedStyle(tr);
        const what = `${tr.children[2]?.textContent}/${tr.dataset.stage}/${tr.dataset.status}`;
        if (cs.display !== "table-row") bad.push(`${what}: display ${cs.display}`);
        if (cs.borderLeftWidth !== getComputedStyle(headRow).borderLeftWidth) bad.push(`${what}: border-left ${cs.borderLeftWidth}`);
        if (tr.children.length !== ths.length) bad.push(`${what}: ${tr.children.length} cells, ${ths.length} columns`);
        [...tr.children].forEach((td, i) => {
          const a = td.getBoundingClientRect(), h = ths[i]?.getBoundingClientRect();
          if (h && (Math.abs(a.left - h.left) > 1 || Math.abs(a.right - h.right) > 1)) bad.push(`${what}: cell ${i} at ${a.left}..${a.right}, column at ${h.left}..${h.right}`);
        });
      }
      return bad;
    })(),
    resultVisible: !document.getElementById("result").hidden,
    result: {
      classification: text("classification"),
      rules: text("rules"),
      answer: text("answer"),
      reward: text("reward"),
      failure: text("failure"),
    },
    raw: (() => {
      try { return JSON.parse(document.getElementById("raw").textContent || "null"); } catch (_) { return null; }
    })(),
  };
});

if (shot) await screenshot(page, shot).catch((e) => console.error(`screenshot: ${e.message}`));
clearTimeout(watchdog);
emit({ ok: state === "done", state, ...seen });
await close().catch(() => {});
process.exit(0);
