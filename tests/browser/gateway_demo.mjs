// Follows one job on relay-sse's demo page (`relay-sse --demo-page`) in
// headless Chromium and reports the rows the page rendered.
//
//   node tests/browser/gateway_demo.mjs <base-url> <job> [screenshot.png]
//
// Protocol with the driving test (one JSON object per stdout line):
//   stdout {"phase":"loaded"}                 page open, EventSource created
//   stdin  "wait N"  → stdout {"phase":"rows","rows":N,"state":...}
//                       once the page shows at least N rows
//   stdin  "finish"  → waits for the page to finish (terminal event), takes
//                       the screenshot, prints {"phase":"result", ...} and exits
// The page's own EventSource does all the streaming and reconnecting (with
// Last-Event-ID); this script only reads the DOM.

import { launch, emit, fail, pollUntil, screenshot, stdinLines } from "./lib.mjs";

const [base, job, shot] = process.argv.slice(2);
if (!base || !job) fail("usage: gateway_demo.mjs <base-url> <job> [screenshot.png]");
const LIMIT_MS = Number(process.env.RELAY_BROWSER_LIMIT_MS || 45_000);

const { page, close } = await launch();
const stop = async (code) => {
  await close().catch(() => {});
  process.exit(code);
};
const watchdog = setTimeout(async () => {
  console.error(`gateway_demo: overall limit of ${LIMIT_MS * 2} ms reached`);
  emit({ phase: "result", ok: false, error: "timeout", rows: await rows().catch(() => []) });
  await stop(1);
}, LIMIT_MS * 2);

async function rows() {
  return page.$$eval("#rows tr:not(.empty-row)", (trs) =>
    trs.map((tr) => ({
      n: Number(tr.children[0].textContent),
      offset: tr.dataset.offset,
      event: tr.children[2].textContent,
      stage: tr.dataset.stage,
      status: tr.dataset.status,
    })),
  );
}

async function pageState() {
  return page.evaluate(() => ({
    status: document.getElementById("status").textContent,
    finished: document.body.dataset.finished || null,
    reconnects: Number(document.body.dataset.reconnects || 0),
  }));
}

try {
  await page.goto(`${base}/?job=${encodeURIComponent(job)}`, { waitUntil: "load" });
} catch (e) {
  fail(`cannot load the demo page: ${e.message}`);
}
emit({ phase: "loaded" });

const input = stdinLines();
for (;;) {
  const line = await input.next();
  if (line.startsWith("wait ")) {
    const n = Number(line.slice(5));
    const ok = await pollUntil(async () => (await rows()).length >= n, LIMIT_MS);
    emit({ phase: "rows", ok: !!ok, rows: (await rows()).length, state: await pageState() });
  } else if (line === "finish" || line === "") {
    const done = await pollUntil(async () => (await pageState()).finished, LIMIT_MS);
    // Give a late duplicate (the bug this test hunts) a moment to show up.
    await new Promise((r) => setTimeout(r, 300));
    if (shot) await screenshot(page, shot).catch((e) => console.error(`screenshot: ${e.message}`));
    emit({ phase: "result", ok: !!done, state: await pageState(), rows: await rows() });
    clearTimeout(watchdog);
    await stop(0);
  } else {
    console.error(`gateway_demo: unknown command ${JSON.stringify(line)}`);
  }
}
