#!/usr/bin/env node
// End-to-end drive of the Seed VMI browser terminal in Debian's Chromium.
//
//   VMI_OPERATOR_TOKEN=… node tests/browser/e2e.mjs --url http://127.0.0.1:PORT/#token=TOKEN \
//        --mail-url http://127.0.0.1:PORT/v1/phones/alice/mail --screenshot-dir DIR
//
// Options: --chromium PATH (default $CHROMIUM or /usr/bin/chromium), --timeout-ms N
// (per wait, default 20000), --skip-history (a site without checkpoints, e.g. the mock).
// Prints one JSON line per step on stdout:
//   {"step":"home",...} {"step":"typed","screen_hash":H} {"step":"notified","bytes_while_asleep":N,...}
//   {"step":"inbox","screen_hash":H} {"step":"done"}
// (H: the page's screen hash, docs/PROTOCOL.md, as 16 lowercase hex digits.) On any
// failure it says what and where on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { fail, launchChromium, phonePoint, runSteps } from './chromium.mjs';

const USAGE =
  'usage: VMI_OPERATOR_TOKEN=… node e2e.mjs --url http://HOST:PORT/#token=TOKEN --mail-url http://HOST:PORT/v1/phones/USER/mail ' +
  '[--screenshot-dir DIR] [--chromium /usr/bin/chromium] [--timeout-ms 20000] [--skip-history]';

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      'mail-url': { type: 'string' },
      'screenshot-dir': { type: 'string' },
      chromium: { type: 'string' },
      'timeout-ms': { type: 'string' },
      'skip-history': { type: 'boolean' },
      help: { type: 'boolean' },
    },
  }));
} catch (e) {
  console.error(`e2e: ${e.message}\n${USAGE}`);
  process.exit(2);
}
if (opts.help) {
  console.log(USAGE);
  process.exit(0);
}
if (!opts.url || !opts['mail-url']) {
  console.error(`e2e: --url and --mail-url are required\n${USAGE}`);
  process.exit(2);
}

const TIMEOUT = Number(opts['timeout-ms'] || 20000);
const QUIET_MS = 600; // a screen is settled after this long without a frame
const PHONE_W = 720;
const PHONE_H = 1280;
const ICONS = { notes: [274, 1090], mail: [102, 1090] };
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-e2e-shots-')));
mkdirSync(shotDir, { recursive: true });

const emit = (obj) => console.log(JSON.stringify(obj));
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));

let currentStep = 'launch';
let thePage = null; // for a screenshot on failure
const pageLog = [];
const pageErrors = [];


async function main() {
  let browser;
  try {
    browser = await launchChromium(executablePath, { viewport: { width: 1000, height: 1400 }, deviceScaleFactor: 1, });
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
  page.on('console', (m) => pageLog.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));

  const vmi = () => page.evaluate(() => {
    const v = window.vmi;
    return v && {
      state: v.state,
      frames: v.frames,
      bytes: v.bytes,
      frameBytes: v.frameBytes,
      pendingInputs: v.pendingInputs,
      notifications: v.notifications,
      width: v.width,
      height: v.height,
      error: v.error,
      latencyMs: v.latencyMs,
      lastSeq: v.lastSeq,
    };
  });

  const checkErrors = () => {
    if (pageErrors.length) fail(`the page threw: ${pageErrors[0]}`);
  };

  // Polls until pred(v) holds; fails after TIMEOUT with `what` and the last state.
  async function waitFor(what, pred) {
    const deadline = Date.now() + TIMEOUT;
    let v;
    for (;;) {
      v = await vmi();
      if (v && pred(v)) return v;
      checkErrors();
      if (Date.now() > deadline) {
        fail(`timed out after ${TIMEOUT} ms waiting for ${what}; window.vmi = ${JSON.stringify(v)}`);
      }
      await sleepMs(50);
    }
  }

  // Waits until every input is acknowledged and no frame came for QUIET_MS (and, with
  // `after`, at least one frame more than `after`).
  async function settle(what, after) {
    const deadline = Date.now() + TIMEOUT;
    let last = -1;
    let since = Date.now();
    for (;;) {
      const v = await vmi();
      checkErrors();
      if (v.state !== 'connected') fail(`${what}: the terminal is ${v.state}${v.error ? ` (${v.error})` : ''}`);
      if (v.frames !== last) {
        last = v.frames;
        since = Date.now();
      }
      const grown = after === undefined || v.frames > after;
      if (grown && v.pendingInputs === 0 && Date.now() - since >= QUIET_MS) return v;
      if (Date.now() > deadline) {
        fail(
          `timed out after ${TIMEOUT} ms waiting for ${what}` +
            `${after !== undefined ? ` (frames > ${after})` : ''} to settle; window.vmi = ${JSON.stringify(v)}`,
        );
      }
      await sleepMs(50);
    }
  }

  async function tapPhone(at) {
    const p = await phonePoint(page, at);
    await page.mouse.click(p.x, p.y);
  }

  const shot = (name) => page.screenshot({ path: join(shotDir, name) });
  const hash = () => page.evaluate(() => window.vmi.screenHash());

  // 1. open the page: connected, a first frame
  currentStep = 'home';
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  let v = await waitFor("state 'connected' and a first frame", (s) => s.state === 'connected' && s.frames >= 1);
  if (v.width !== PHONE_W || v.height !== PHONE_H) fail(`the phone is ${v.width}x${v.height}, expected ${PHONE_W}x${PHONE_H}`);
  v = await settle('the first screen');
  // a phone left in an app by an earlier run starts there: go home first (a no-op at home)
  await page.keyboard.press('Home');
  v = await settle('the home screen');
  const url = new URL(page.url());
  if (url.searchParams.has('token') || url.hash.includes('token')) fail(`the token is still in the address bar: ${page.url()}`);
  await shot('home.png');
  emit({ step: 'home', width: v.width, height: v.height, frames: v.frames, bytes: v.bytes });

  // 2. open Notes and type
  currentStep = 'typed';
  await tapPhone(ICONS.notes);
  v = await settle('Notes to open', v.frames);
  const beforeTyping = v.frames;
  await page.keyboard.type('Hello from Chromium', { delay: 15 });
  v = await settle('the typed text to show (is Notes open?)', beforeTyping);
  await shot('notes.png');
  emit({ step: 'typed', screen_hash: await hash(), frames: v.frames });

  // 2b. "Restore my phone to…": save a checkpoint, type more, restore it from the list
  if (!opts['skip-history']) await restoreFromHistory();

  async function restoreFromHistory() {
    currentStep = 'restored';
    const history = () => page.evaluate(() => window.vmi.history);
    const waitHistory = async (what, pred) => {
      const deadline = Date.now() + TIMEOUT;
      for (;;) {
        const h = await history();
        if (h && pred(h)) return h;
        checkErrors();
        if (Date.now() > deadline) fail(`timed out waiting for ${what}; history = ${JSON.stringify(h)}`);
        await sleepMs(50);
      }
    };
    await waitHistory('the checkpoint list to load', (h) => h.loads >= 1);
    await page.click('#hist-save');
    let h = await waitHistory('the saved checkpoint in the list', (h) => h.saved && h.checkpoints.some((c) => c.id === h.saved));
    const saved = h.saved;
    v = await vmi();
    const beforeMore = v.frames;
    await page.keyboard.type(' and more', { delay: 15 });
    v = await settle('the extra text to show', beforeMore);
    const row = `#hist-list li[data-id="${saved}"] button`;
    await page.click(row); // arms: "Sure?"
    await page.waitForSelector(`${row}.confirm`);
    await shot('history.png');
    const beforeRestore = (await vmi()).frames;
    await page.click(row);
    const listed = h.checkpoints.length;
    // done: restored, and the list reloaded with the checkpoint of what it left
    h = await waitHistory('the restore to finish', (h) => h.restored === saved && h.checkpoints.length > listed);
    v = await settle('the restored screen', beforeRestore);
    await shot('restored.png');
    emit({ step: 'restored', id: saved, checkpoints: h.checkpoints.length, screen_hash: await hash() });
  }

  // 3. sleep; a mail arrives as a notification and no frame
  currentStep = 'notified';
  await page.click('#sleep-btn');
  await waitFor("state 'asleep'", (s) => s.state === 'asleep');
  await sleepMs(300); // a frame already on the wire when Sleep left would land here
  const asleep = await vmi();
  const mail = { from: 'ann@example.com', subject: 'Lunch?', body: 'Noon' };
  let res;
  try {
    res = await fetch(opts['mail-url'], {
      method: 'POST',
      // The mail route is the operator's: the test hands its token over in the environment, never in argv.
      headers: { 'content-type': 'application/json', authorization: `Bearer ${process.env.VMI_OPERATOR_TOKEN}` },
      body: JSON.stringify(mail),
    });
  } catch (e) {
    fail(`POST ${opts['mail-url']} failed: ${e.message}`);
  }
  if (!res.ok) fail(`POST ${opts['mail-url']} answered ${res.status}: ${await res.text()}`);
  v = await waitFor('a notification ann@example.com / Lunch?', (s) =>
    s.notifications.some((n) => n.title === 'ann@example.com' && n.body === 'Lunch?'),
  );
  await sleepMs(1000); // give a (wrong) frame time to show up
  v = await vmi();
  checkErrors();
  if (v.state !== 'asleep') fail(`the terminal left sleep by itself: ${v.state}`);
  const frameBytesAsleep = v.frameBytes - asleep.frameBytes;
  if (v.frames !== asleep.frames || frameBytesAsleep !== 0) {
    fail(`frames arrived while asleep: ${v.frames - asleep.frames} updates, ${frameBytesAsleep} bytes`);
  }
  await shot('asleep.png');
  const note = v.notifications.find((n) => n.title === 'ann@example.com');
  emit({
    step: 'notified',
    bytes_while_asleep: frameBytesAsleep,
    all_bytes_while_asleep: v.bytes - asleep.bytes,
    notification: { title: note.title, body: note.body },
  });

  // 4. wake, go home, open Mail
  currentStep = 'inbox';
  await page.click('#wake-btn');
  await waitFor("state 'connected' after Wake", (s) => s.state === 'connected');
  // the notification was seen on the lock screen: waking does not show it again
  const toastsOnWake = await page.evaluate(() => document.querySelectorAll('#toasts .toast').length);
  v = await settle('the frame answering Wake', asleep.frames);
  await page.keyboard.press('Home');
  v = await settle('the home screen');
  await tapPhone(ICONS.mail);
  v = await settle('Mail to open', v.frames);
  await shot('inbox.png');
  emit({ step: 'inbox', screen_hash: await hash(), frames: v.frames, toasts_on_wake: toastsOnWake });

  currentStep = 'done';
  checkErrors();
  emit({ step: 'done' });
}

runSteps('e2e', main, {
  limitMs: 180000,
  step: () => currentStep,
  onFailure: () => {
    if (pageErrors.length) console.error(`e2e: page errors:\n  ${pageErrors.join('\n  ')}`);
    if (pageLog.length) console.error(`e2e: page console (last 30):\n  ${pageLog.slice(-30).join('\n  ')}`);
    console.error(`e2e: screenshots in ${shotDir} (failure.png: the page when it failed)`);
  },
});
