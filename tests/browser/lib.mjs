// Shared browser harness for relay's tests: launches Debian's Chromium
// (/usr/bin/chromium, or $CHROMIUM_BIN) headless through playwright-core with
// a fresh profile directory, and a few helpers the scripts share.
//
//   import { launch, emit, fail } from "./lib.mjs";
//   const { browser, page, close } = await launch();
//   await page.goto(url);
//   ...
//   await close();
//
// playwright-core downloads no browser of its own; this harness only drives
// the system one. Scripts print their results as JSON on stdout (one object)
// for the Rust test that runs them to assert on; diagnostics go to stderr.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-quic",
  "--no-first-run",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
];

/// Path of the Chromium binary to drive.
export function chromiumPath() {
  return process.env.CHROMIUM_BIN || "/usr/bin/chromium";
}

/// Launches Chromium with a fresh --user-data-dir and opens one page.
/// Returns { browser (a persistent context), page, close }.
/// Options: { viewport: {width, height}, timeoutMs, onConsole }.
export async function launch(opts = {}) {
  // Everything this run writes to a temp dir (the profile, playwright's
  // artifacts, Chromium's own files) goes under one root that is removed on
  // close and, whatever path the script leaves by (a watchdog's exit, an
  // uncaught error), when the process exits: tests leave nothing in /tmp.
  const root = mkdtempSync(join(tmpdir(), "relay-browser-"));
  const removeRoot = () => rmSync(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
  process.on("exit", removeRoot);
  process.env.TMPDIR = root;
  const userDataDir = mkdtempSync(join(root, "relay-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath(),
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: opts.viewport || { width: 1100, height: 800 },
    timeout: opts.timeoutMs || 30_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(opts.timeoutMs || 30_000);
  page.on("console", (msg) => {
    if (opts.onConsole) opts.onConsole(msg);
    else if (process.env.RELAY_BROWSER_DEBUG) console.error(`[console.${msg.type()}] ${msg.text()}`);
  });
  page.on("pageerror", (err) => console.error(`[pageerror] ${err.message}`));
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    try {
      await context.close();
    } finally {
      removeRoot();
    }
  };
  return { browser: context, context, page, close };
}

/// Saves a full-page screenshot to `path` (directories created).
export async function screenshot(page, path) {
  mkdirSync(dirname(path), { recursive: true });
  await page.screenshot({ path, fullPage: true });
}

/// Prints the result object as one JSON line on stdout.
export function emit(result) {
  process.stdout.write(JSON.stringify(result) + "\n");
}

/// Prints an error and exits non-zero.
export function fail(message, extra = {}) {
  console.error(`error: ${message}`);
  emit({ ok: false, error: String(message), ...extra });
  process.exit(1);
}

/// Reads a line-oriented command channel on stdin: resolves with the next
/// line that equals (or starts with) `word`. Lets a Rust test step a script
/// (e.g. "restarted" after it restarts a server).
export function stdinLines() {
  let buffer = "";
  const waiting = [];
  const lines = [];
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    buffer += chunk;
    let i;
    while ((i = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, i).trim();
      buffer = buffer.slice(i + 1);
      const w = waiting.shift();
      if (w) w(line);
      else lines.push(line);
    }
  });
  // The driver went away: behave as if it said "" (scripts then finish).
  process.stdin.on("end", () => {
    for (const w of waiting.splice(0)) w("");
    lines.push("");
  });
  return {
    next() {
      if (lines.length) return Promise.resolve(lines.shift());
      return new Promise((resolve) => waiting.push(resolve));
    },
  };
}

/// Polls `fn` (async, returns truthy when done) every `everyMs` until it
/// returns truthy or `limitMs` passes; resolves with its value or null.
export async function pollUntil(fn, limitMs = 30_000, everyMs = 100) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
