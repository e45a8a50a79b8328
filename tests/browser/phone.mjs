#!/usr/bin/env node
// The browser terminal on a phone, in Debian's Chromium emulating one (390×844 CSS px, device pixel ratio 3,
// touch): the screen fills the viewport, and text typed through the text field (as a phone keyboard and an
// input method send it: `beforeinput` and composition events) lands in Notes as typed.
//
//   node tests/browser/phone.mjs --url http://127.0.0.1:PORT/#token=TOKEN --screenshot-dir DIR
//
// Prints one JSON line per step on stdout: {"step":"layout",...} {"step":"typed",...} {"step":"done"}.
// On any failure it says what and where on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { launchChromium } from './chromium.mjs';

const USAGE = 'usage: node phone.mjs --url http://HOST:PORT/#token=TOKEN [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: { url: { type: 'string' }, 'screenshot-dir': { type: 'string' }, chromium: { type: 'string' } },
  }));
} catch (e) {
  console.error(`phone: ${e.message}\n${USAGE}`);
  process.exit(2);
}
if (!opts.url) {
  console.error(`phone: --url is required\n${USAGE}`);
  process.exit(2);
}

const TIMEOUT = 20000;
const QUIET_MS = 600;
const NOTES = [274, 1090];
/** What is typed: a keyboard's accents and AltGr symbol, then two characters through an input method. */
const TYPED = 'héllo € ';
const COMPOSED = '日本';
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-phone-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));
class StepError extends Error {}
const fail = (msg) => {
  throw new StepError(msg);
};
let currentStep = 'launch';
let thePage = null;
const pageErrors = [];

async function main() {
  let browser;
  try {
    browser = await launchChromium(executablePath, { viewport: { width: 390, height: 844 }, deviceScaleFactor: 3, isMobile: true, hasTouch: true, });
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
    page.evaluate(() => {
      const v = window.vmi;
      return v && { state: v.state, frames: v.frames, pendingInputs: v.pendingInputs, width: v.width, height: v.height };
    });
  async function settle(what, after) {
    const deadline = Date.now() + TIMEOUT;
    let last = -1;
    let since = Date.now();
    for (;;) {
      const v = await vmi();
      if (pageErrors.length) fail(`the page threw: ${pageErrors[0]}`);
      if (v && v.frames !== last) {
        last = v.frames;
        since = Date.now();
      }
      const ok = v && v.state === 'connected' && (after === undefined || v.frames > after);
      if (ok && v.pendingInputs === 0 && Date.now() - since >= QUIET_MS) return v;
      if (Date.now() > deadline) fail(`timed out waiting for ${what}; window.vmi = ${JSON.stringify(v)}`);
      await sleepMs(50);
    }
  }
  async function tapPhone([px, py]) {
    const p = await page.evaluate(
      ([x, y]) => {
        const r = document.getElementById('screen').getBoundingClientRect();
        return { x: r.left + ((x + 0.5) * r.width) / window.vmi.width, y: r.top + ((y + 0.5) * r.height) / window.vmi.height };
      },
      [px, py],
    );
    await page.touchscreen.tap(p.x, p.y);
  }

  // 1. The screen is the terminal: it fills the viewport's width, no bezel, no bars.
  currentStep = 'layout';
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  let v = await settle('the first screen');
  const layout = await page.evaluate(() => {
    const r = document.getElementById('screen').getBoundingClientRect();
    const visible = (id) => {
      const el = document.getElementById(id);
      return !!el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    };
    return {
      phone_first: document.body.classList.contains('phone-first'),
      screen: [r.left, r.top, r.width, r.height],
      viewport: [window.innerWidth, window.innerHeight],
      dpr: window.devicePixelRatio,
      keyboard_button: visible('keyboard-btn'),
      top_bar: visible('state-text'),
      manifest: !!document.querySelector('link[rel="manifest"]'),
    };
  });
  await page.screenshot({ path: join(shotDir, 'phone-home.png') });
  if (!layout.phone_first) fail(`not in the phone-first layout: ${JSON.stringify(layout)}`);
  const share = layout.screen[2] / layout.viewport[0];
  if (share < 0.95) fail(`the screen is ${layout.screen[2]} of ${layout.viewport[0]} CSS px wide (${share})`);
  if (!layout.keyboard_button) fail('no keyboard button on a touch device');
  const manifest = await page.evaluate(async () => (await fetch('manifest.webmanifest')).json());
  if (manifest.display !== 'standalone') fail(`the web app manifest: ${JSON.stringify(manifest)}`);
  emit({ step: 'layout', ...layout, width_share: Math.round(share * 1000) / 1000, manifest_display: manifest.display });

  // 2. Notes, the keyboard button, then text as a phone keyboard sends it and through an input method.
  currentStep = 'typed';
  await tapPhone(NOTES);
  v = await settle('Notes to open', v.frames);
  const box = await page.locator('#keyboard-btn').boundingBox();
  await page.touchscreen.tap(box.x + box.width / 2, box.y + box.height / 2);
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  if (focused !== 'keys') fail(`the keyboard button did not focus the text field (focus on ${focused})`);
  const before = v.frames;
  await page.keyboard.insertText(TYPED);
  const cdp = await context.newCDPSession(page);
  await cdp.send('Input.imeSetComposition', { text: COMPOSED.slice(0, 1), selectionStart: 1, selectionEnd: 1 });
  await cdp.send('Input.imeSetComposition', { text: COMPOSED, selectionStart: 2, selectionEnd: 2 });
  await cdp.send('Input.insertText', { text: COMPOSED });
  v = await settle('the typed text to show', before);
  const left = await page.evaluate(() => document.getElementById('keys').value);
  if (left !== '') fail(`the text field kept ${JSON.stringify(left)}`);
  await page.screenshot({ path: join(shotDir, 'phone-notes.png') });
  emit({ step: 'typed', text: TYPED + COMPOSED, frames: v.frames });

  currentStep = 'done';
  emit({ step: 'done' });
}

const watchdog = setTimeout(() => {
  console.error(`phone: FAILED at step '${currentStep}': the whole run took over 120 s`);
  process.exit(1);
}, 120000);
watchdog.unref();

try {
  await main();
  process.exit(0);
} catch (e) {
  console.error(`phone: FAILED at step '${currentStep}': ${e instanceof StepError ? e.message : (e && e.stack) || e}`);
  if (pageErrors.length) console.error(`phone: page errors:\n  ${pageErrors.join('\n  ')}`);
  console.error(`phone: screenshots in ${shotDir}`);
  process.exit(1);
}
