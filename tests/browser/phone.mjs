#!/usr/bin/env node
// The browser terminal on a phone, in Debian's Chromium emulating one (390×844 CSS px, device pixel ratio 3,
// touch): the screen fills the viewport and the phone lays out for it; text typed through the text field (as a
// phone keyboard and an input method send it: `beforeinput` and composition events) lands in Notes as typed;
// Copy in Notes reaches the page's clipboard; two fingers draw two strokes in Paint; a rotation reaches the phone
// and the page's screen after it equals the phone's framebuffer; a flick on a long inbox glides, travels as copies
// (protocol version 4) and leaves the page's screen equal to the phone's framebuffer.
//
//   node tests/browser/phone.mjs --url http://127.0.0.1:PORT/#token=TOKEN --operator-token OP --screenshot-dir DIR
//
// Prints one JSON line per step on stdout: {"step":"layout",...} {"step":"typed",...} {"step":"clipboard",...}
// {"step":"two_fingers",...} {"step":"fling",...} {"step":"rotated",...} {"step":"done"}.
// On any failure it says what and where on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { fail, launchChromium, phonePoint, runSteps } from './chromium.mjs';

const USAGE =
  'usage: node phone.mjs --url http://HOST:PORT/#token=TOKEN --operator-token OP [--user NAME] [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      'operator-token': { type: 'string' },
      user: { type: 'string', default: 'pat' },
      'screenshot-dir': { type: 'string' },
      chromium: { type: 'string' },
    },
  }));
} catch (e) {
  console.error(`phone: ${e.message}\n${USAGE}`);
  process.exit(2);
}
if (!opts.url || !opts['operator-token']) {
  console.error(`phone: --url and --operator-token are required\n${USAGE}`);
  process.exit(2);
}

const TIMEOUT = 20000;
const QUIET_MS = 600;
/**
 * Where the default phone (guest/vmi-phone) puts things on a `w × h` screen laid out at 2 pixels per CSS pixel
 * (theme.rs: the 720-pixel design at scale min(1, short side / 640)): the centre of app `i`'s cell in the dock,
 * the Notes Copy button, and the Paint paper.
 */
function phoneLayout(w, h) {
  const s = Math.min(1, Math.min(w, h) / 640);
  const d = (px) => Math.round(px * s);
  const pad = d(32);
  const dockH = d(214);
  const dockY = h - d(48) - dockH - d(12);
  const cell = Math.trunc((w - pad) / 4);
  return {
    app: (i) => [Math.trunc(pad / 2) + cell * i + Math.trunc(cell / 2), dockY + Math.trunc(dockH / 2)],
    copy: [w - d(100), d(48) + d(56)],
    paper: { top: d(48) + d(112), bottom: h - d(48) },
  };
}
/** What is typed: a keyboard's accents and AltGr symbol, then two characters through an input method. */
const TYPED = 'héllo € ';
const COMPOSED = '日本';
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-phone-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));
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
      return (
        v && {
          state: v.state,
          frames: v.frames,
          copies: v.copies,
          frameBytes: v.frameBytes,
          pendingInputs: v.pendingInputs,
          width: v.width,
          height: v.height,
        }
      );
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
  async function tapPhone(at) {
    const p = await phonePoint(page, at);
    await page.touchscreen.tap(p.x, p.y);
  }
  /** The page's screen hash beside the phone's own (asked of the site), once they agree or after 5 tries. */
  async function sameScreen() {
    let hashes = null;
    for (let tries = 0; tries < 5; tries++) {
      hashes = await page.evaluate(
        async ([op, user]) => {
          const site = await (await fetch(`v1/phones/${user}/screen-hash`, { headers: { authorization: `Bearer ${op}` } })).json();
          return { page: window.vmi.screenHash(), site: site.hash, size: [site.width, site.height] };
        },
        [opts['operator-token'], opts.user],
      );
      if (hashes.page === hashes.site) break;
      await sleepMs(300);
    }
    return hashes;
  }

  // 1. The screen is the terminal: it fills the viewport's width, no bezel, no bars.
  currentStep = 'layout';
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(opts.url).origin });
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  let v = await settle('the first screen');
  // The phone laid its screen out for this display: 2 pixels per CSS pixel of the room the page gives it.
  if (v.width < 700 || v.height <= v.width) fail(`the phone did not follow the display: ${JSON.stringify(v)}`);
  let at = phoneLayout(v.width, v.height);
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
  await tapPhone(at.app(1));
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

  // 3. Copy in Notes puts the note on this device's clipboard.
  currentStep = 'clipboard';
  await page.evaluate(() => document.getElementById('keys').blur());
  await tapPhone(at.copy);
  const deadline = Date.now() + TIMEOUT;
  while (!(await page.evaluate(() => window.vmi.clipboard && window.vmi.clipboard.onDevice))) {
    if (Date.now() > deadline) fail(`no copy reached the page: ${JSON.stringify(await page.evaluate(() => window.vmi.clipboard))}`);
    await sleepMs(50);
  }
  const clip = await page.evaluate(() => navigator.clipboard.readText());
  if (clip !== TYPED + COMPOSED) fail(`the clipboard holds ${JSON.stringify(clip)}`);
  emit({ step: 'clipboard', text: clip });

  // 4. Paint: two fingers at once draw two strokes.
  currentStep = 'two_fingers';
  v = await settle('Copied', v.frames);
  await page.locator('#home-btn').tap();
  v = await settle('home', v.frames);
  await tapPhone(at.app(2));
  v = await settle('Paint', v.frames);
  const toPage = ([px, py]) =>
    page.evaluate(
      ([x, y]) => {
        const r = document.getElementById('screen').getBoundingClientRect();
        return { x: r.left + ((x + 0.5) * r.width) / window.vmi.width, y: r.top + ((y + 0.5) * r.height) / window.vmi.height };
      },
      [px, py],
    );
  const xs = [Math.round(v.width * 0.3), Math.round(v.width * 0.7)];
  const ys = [at.paper.top + 100, at.paper.top + 500];
  const touch = async (type, y) => {
    const points = [];
    if (type !== 'touchEnd') {
      for (const [id, x] of xs.entries()) {
        const p = await toPage([x, y]);
        points.push({ x: p.x, y: p.y, id });
      }
    }
    await cdp.send('Input.dispatchTouchEvent', { type, touchPoints: points });
  };
  await touch('touchStart', ys[0]);
  for (let k = 1; k <= 10; k++) await touch('touchMove', ys[0] + ((ys[1] - ys[0]) * k) / 10);
  await touch('touchEnd', ys[1]);
  v = await settle('the strokes', v.frames);
  const ink = await page.evaluate(
    ([xs, y]) => {
      const ctx = document.getElementById('screen').getContext('2d');
      return [...xs, Math.round((xs[0] + xs[1]) / 2)].map((x) => [...ctx.getImageData(x, y, 1, 1).data.slice(0, 3)]);
    },
    [xs, Math.round((ys[0] + ys[1]) / 2)],
  );
  const paper = JSON.stringify(ink[2]);
  if (JSON.stringify(ink[0]) === paper || JSON.stringify(ink[1]) === paper) {
    fail(`two fingers did not draw two strokes: ink ${JSON.stringify(ink)}`);
  }
  await page.screenshot({ path: join(shotDir, 'phone-two-fingers.png') });
  emit({ step: 'two_fingers', ink });

  // 5. A flick on the inbox (the test filled it): the list glides on the phone's timer, each frame a copy of what
  // the page already shows and the strip it uncovered; once it stops the page shows the phone's framebuffer.
  currentStep = 'fling';
  await page.locator('#home-btn').tap();
  v = await settle('home', v.frames);
  await tapPhone(at.app(0));
  v = await settle('Inbox', v.frames);
  const beforeFling = { frames: v.frames, copies: v.copies, frameBytes: v.frameBytes };
  const flingX = Math.round(v.width / 2);
  const y0 = Math.round(v.height * 0.75);
  const finger = async (type, y) => {
    const p = type === 'touchEnd' ? null : await toPage([flingX, y]);
    await cdp.send('Input.dispatchTouchEvent', { type, touchPoints: p ? [{ x: p.x, y: p.y, id: 0 }] : [] });
  };
  await finger('touchStart', y0);
  for (let k = 1; k <= 6; k++) {
    await sleepMs(16);
    await finger('touchMove', y0 - 40 * k);
  }
  await finger('touchEnd', y0 - 240);
  v = await settle('the end of the glide', beforeFling.frames);
  await page.screenshot({ path: join(shotDir, 'phone-fling.png') });
  const flung = await sameScreen();
  if (flung.page !== flung.site) fail(`after the glide the page shows another screen: ${JSON.stringify(flung)}`);
  emit({
    step: 'fling',
    frames: v.frames - beforeFling.frames,
    copies: v.copies - beforeFling.copies,
    bytes: v.frameBytes - beforeFling.frameBytes,
    ...flung,
  });

  // 6. A rotation: the phone lays out for landscape, and the page shows exactly the phone's framebuffer.
  currentStep = 'rotated';
  await page.setViewportSize({ width: 844, height: 390 });
  const turned = Date.now() + TIMEOUT;
  while (!((v = await vmi()) && v.width > v.height)) {
    if (Date.now() > turned) fail(`the phone did not turn: ${JSON.stringify(v)}`);
    await sleepMs(50);
  }
  v = await settle('the landscape screen', 0);
  const hashes = await sameScreen();
  await page.screenshot({ path: join(shotDir, 'phone-landscape.png') });
  if (hashes.page !== hashes.site) fail(`after the rotation the page shows another screen: ${JSON.stringify(hashes)}`);
  emit({ step: 'rotated', width: v.width, height: v.height, ...hashes, screens: await page.evaluate(() => window.vmi.screens) });

  currentStep = 'done';
  emit({ step: 'done' });
}

runSteps('phone', main, {
  limitMs: 120000,
  step: () => currentStep,
  onFailure: () => {
    if (pageErrors.length) console.error(`phone: page errors:\n  ${pageErrors.join('\n  ')}`);
    console.error(`phone: screenshots in ${shotDir}`);
  },
});
