#!/usr/bin/env node
// A Linux phone in the browser terminal, in Debian's Chromium: the page shows the guest's desktop (its terminal
// emulator's prompt), a command typed on the page's keyboard runs in the guest's shell, and once the screen is
// still the page receives no frame bytes at all while the guest runs on.
//
//   node tests/browser/linux.mjs --url http://127.0.0.1:PORT/#token=TOKEN --screenshot-dir DIR
//
// Prints {"step":"shown",...}, types `echo hello from chromium >> web.txt` and prints {"step":"typed",...}; once the
// screen has been still a moment prints {"step":"still",...} and waits for "ran" on stdin (the test has seen the
// guest's own clock advance), then prints {"step":"static","frames":N,"frame_bytes":N} (what arrived meanwhile)
// and {"step":"done"}. On a failure it says what on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { onDesktopPage, stdinLines } from './chromium.mjs';

const USAGE = 'usage: node linux.mjs --url http://HOST:PORT/#token=TOKEN [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      'screenshot-dir': { type: 'string' },
      chromium: { type: 'string' },
    },
  }));
} catch (e) {
  console.error(`linux: ${e.message}\n${USAGE}`);
  process.exit(2);
}
if (!opts.url) {
  console.error(`linux: --url is required\n${USAGE}`);
  process.exit(2);
}
/** A Linux guest under TCG answers slowly: a minute for what takes a wasm phone a second. */
const TIMEOUT = 120000;
/** No frame for this long: the screen is still. */
const QUIET_MS = 1500;
const TYPED = 'echo hello from chromium >> web.txt';
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-linux-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));
const awaitLine = stdinLines();

async function run(page) {
  page.setDefaultTimeout(TIMEOUT);
  const vmi = () => page.evaluate(() => ({
    state: window.vmi.state,
    frames: window.vmi.frames,
    frameBytes: window.vmi.frameBytes,
    width: window.vmi.width,
    height: window.vmi.height,
  }));
  // Light pixels (the prompt's text) in the screen's top rows, read from the page's canvas.
  const textRows = () => page.evaluate(() => {
    const canvas = document.getElementById('screen');
    const rows = Math.min(40, canvas.height);
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, rows).data;
    let light = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] > 0xa0 && px[i + 1] > 0xa0) light++;
    return light;
  });
  // Waits until no frame has come for QUIET_MS.
  const still = async (what) => {
    const deadline = Date.now() + TIMEOUT;
    let last = await vmi();
    let since = Date.now();
    for (;;) {
      await page.waitForTimeout(100);
      const now = await vmi();
      if (now.frames !== last.frames) {
        last = now;
        since = Date.now();
      } else if (Date.now() - since >= QUIET_MS) {
        return now;
      }
      if (Date.now() > deadline) throw new Error(`the screen never became still after ${what}`);
    }
  };
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  await page.waitForFunction(() => window.vmi && window.vmi.state === 'connected' && window.vmi.frames >= 1);
  await page.waitForFunction(() => {
    const canvas = document.getElementById('screen');
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, Math.min(40, canvas.height)).data;
    for (let i = 0; i < px.length; i += 4) if (px[i] > 0xa0 && px[i + 1] > 0xa0) return true;
    return false;
  });
  let v = await still('the first screen');
  await page.screenshot({ path: join(shotDir, 'linux-prompt.png') });
  emit({ step: 'shown', width: v.width, height: v.height, frames: v.frames, light_pixels: await textRows() });

  const before = v.frames;
  await page.keyboard.type(TYPED, { delay: 40 });
  await page.keyboard.press('Enter');
  await page.waitForFunction((n) => window.vmi.frames > n, before);
  v = await still('typing');
  await page.screenshot({ path: join(shotDir, 'linux-typed.png') });
  emit({ step: 'typed', text: TYPED, frames: v.frames - before });

  // A still screen costs nothing: what arrives between here and the test's word that the guest ran on.
  const quiet = await still('the command');
  emit({ step: 'still', frames: quiet.frames, frame_bytes: quiet.frameBytes });
  await awaitLine('ran');
  const after = await vmi();
  await page.screenshot({ path: join(shotDir, 'linux-static.png') });
  emit({
    step: 'static',
    state: after.state,
    frames: after.frames - quiet.frames,
    frame_bytes: after.frameBytes - quiet.frameBytes,
  });
  emit({ step: 'done' });
}

const main = () => onDesktopPage(executablePath, shotDir, run);

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`linux: ${e.stack || e}`);
    process.exit(1);
  },
);
