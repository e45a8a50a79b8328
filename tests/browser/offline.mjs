#!/usr/bin/env node
// The phone offline in the browser, in Debian's Chromium: "Take offline" checks the phone out and the
// page runs it; with the site stopped the page types in Notes, reloads (the service worker serves the page, the
// browser's storage the phone) and shows the same screen; with the site back "Check in" returns the phone, and the
// page is connected to it on the site again.
//
//   node tests/browser/offline.mjs --url http://127.0.0.1:PORT/#token=TOKEN --screenshot-dir DIR
//
// The test that runs it stops and starts the site: the driver prints {"step":"checked_out",...} and waits for the
// line "site-down" on stdin, then prints {"step":"reloaded",...} and waits for "site-up". Prints one JSON line per
// step on stdout; on any failure it says what and where on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { fail, launchChromium, phonePoint, runSteps, stdinLines } from './chromium.mjs';

const USAGE = 'usage: node offline.mjs --url http://HOST:PORT/#token=TOKEN [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: { url: { type: 'string' }, 'screenshot-dir': { type: 'string' }, chromium: { type: 'string' } },
  }));
} catch (e) {
  console.error(`offline: ${e.message}\n${USAGE}`);
  process.exit(2);
}
if (!opts.url) {
  console.error(`offline: --url is required\n${USAGE}`);
  process.exit(2);
}

const TIMEOUT = 30000;
const QUIET_MS = 600;
const NOTES = [274, 1090];
const TYPED = 'written offline, héllo';
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-offline-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));
let currentStep = 'launch';
let thePage = null;
const pageErrors = [];

/** The lines the test writes on stdin, one at a time. */
const awaitLine = stdinLines();

async function main() {
  let browser;
  try {
    browser = await launchChromium(executablePath, { viewport: { width: 1280, height: 1000 }, deviceScaleFactor: 1 });
  } catch (e) {
    fail(e.message);
  }
  try {
    await run(browser.context);
  } catch (e) {
    if (thePage) await thePage.screenshot({ path: join(shotDir, 'failure.png') }).catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
}

async function run(context) {
  const page = context.pages()[0] || (await context.newPage());
  thePage = page;
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
  const vmi = () =>
    page
      .evaluate(() => {
        const v = window.vmi;
        return v && { state: v.state, frames: v.frames, width: v.width, height: v.height, error: v.error, offline: v.offline };
      })
      .catch(() => null); // a page reloading has no window.vmi for a moment
  async function waitFor(what, pred) {
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      const v = await vmi();
      if (v && pred(v)) return v;
      if (pageErrors.length) fail(`the page threw: ${pageErrors[0]}`);
      if (Date.now() > deadline) fail(`timed out waiting for ${what}; window.vmi = ${JSON.stringify(v)}`);
      await sleepMs(50);
    }
  }
  /** Waits until no frame came for QUIET_MS (with `after`, at least one frame after it) in state `state`. */
  async function settle(what, state, after) {
    const deadline = Date.now() + TIMEOUT;
    let last = -1;
    let since = Date.now();
    for (;;) {
      const v = await vmi();
      if (v && v.state !== state) fail(`${what}: the terminal is ${v.state}${v.error ? ` (${v.error})` : ''}`);
      if (v && v.frames !== last) {
        last = v.frames;
        since = Date.now();
      }
      if (v && (after === undefined || v.frames > after) && Date.now() - since >= QUIET_MS) return v;
      if (Date.now() > deadline) fail(`timed out waiting for ${what} to settle; window.vmi = ${JSON.stringify(v)}`);
      await sleepMs(50);
    }
  }
  async function tapPhone(at) {
    const p = await phonePoint(page, at);
    await page.mouse.click(p.x, p.y);
  }
  const shot = (name) => page.screenshot({ path: join(shotDir, name) });
  const hash = () => page.evaluate(() => window.vmi.screenHash());
  const chipText = () => page.evaluate(() => document.getElementById('offline-text').textContent);

  // 1. On the site; the page's service worker is in control (it keeps the page for when the site is gone).
  currentStep = 'online';
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  await waitFor("state 'connected' and a first frame", (v) => v.state === 'connected' && v.frames >= 1);
  await page.evaluate(() => navigator.serviceWorker.ready.then(() => true));
  await settle('the first screen', 'connected');

  // 2. "Take offline": checked out, the page reloads and runs the phone itself.
  currentStep = 'checked_out';
  await page.locator('#offline-btn').click();
  let v = await waitFor("state 'offline' and a first frame from the phone in the page", (s) =>
    s.state === 'offline' && s.frames >= 1 && s.offline && s.offline.user);
  v = await settle('the phone started in the page', 'offline');
  const controlled = await page.evaluate(() => !!navigator.serviceWorker.controller);
  if (!controlled) fail('the page is not controlled by its service worker after the checkout');
  const chip = await chipText();
  if (!/running on this device/.test(chip) || !/slower/.test(chip)) fail(`the chip does not say where the phone runs: ${chip}`);
  await shot('offline.png');
  emit({ step: 'checked_out', user: v.offline.user, chip, width: v.width, height: v.height });

  // 3. The site stops: type in Notes with no network, the state is kept in the browser.
  await awaitLine('site-down');
  currentStep = 'typed_offline';
  const reachable = await page.evaluate(() => fetch('v1/demo/me').then(() => true, () => false));
  if (reachable) fail('the site still answers: the test should have stopped it');
  await tapPhone(NOTES);
  v = await settle('Notes to open offline', 'offline', v.frames);
  await page.keyboard.type(TYPED, { delay: 15 });
  v = await settle('the typed text to show offline', 'offline', v.frames);
  // The status bar's clock changes at each minute: the screens before and after the reload are compared within one
  // minute, so this waits out a minute that is about to turn (then the tick, its frame and its save settle).
  const secondOfMinute = new Date().getSeconds();
  if (secondOfMinute >= 45) {
    await sleepMs((61 - secondOfMinute) * 1000);
    v = await settle('the minute tick', 'offline');
  }
  const saves = v.offline.saves;
  await page.evaluate(() => new Promise((r) => setTimeout(r, 400)));
  v = await waitFor('the state saved in the browser', (s) => s.offline.saves > saves || s.offline.saves > 0);
  const before = await hash();
  await shot('offline-typed.png');
  emit({
    step: 'typed_offline',
    text: TYPED,
    screen_hash: before,
    saves: v.offline.saves,
    save_ms: v.offline.saveMs,
    saved_bytes: v.offline.savedBytes,
  });

  // 4. Reload with the site still down: the service worker serves the page, the browser's storage the phone.
  currentStep = 'reloaded';
  await page.reload({ waitUntil: 'load', timeout: TIMEOUT });
  await waitFor("state 'offline' after the reload", (s) => s.state === 'offline' && s.frames >= 1 && s.offline && s.offline.user);
  v = await settle('the phone after the reload', 'offline');
  const after = await hash();
  await shot('offline-reloaded.png');
  emit({ step: 'reloaded', before, after, start_ms: v.offline.startMs });

  // 5. The site is back: "Check in" returns the phone, and the page connects to it there.
  await awaitLine('site-up');
  currentStep = 'checked_in';
  await page.locator('#checkin-btn').click();
  await waitFor("state 'connected' after the checkin", (s) => s.state === 'connected' && s.frames >= 1);
  v = await settle('the phone on its site again', 'connected');
  await shot('checked-in.png');
  emit({ step: 'checked_in', screen_hash: await hash(), stored: await page.evaluate(() => window.vmi.offline === undefined) });
  emit({ step: 'done' });
}

runSteps('offline', main, { limitMs: 240000, step: () => currentStep });
