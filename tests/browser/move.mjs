#!/usr/bin/env node
// A live migration as the browser terminal sees it, in Debian's Chromium: the stopwatch runs (a frame every 50 ms),
// the phone moves to another site, and the page shows no outage overlay and no frame gap longer than the move's own
// terminal gap (Redirect → first frame from the new site) plus one frame interval; the map then names the new site
// and gives it the connection's own round trip.
//
//   node tests/browser/move.mjs --url http://127.0.0.1:PORT/#token=TOKEN --to SITE --screenshot-dir DIR
//
// Prints {"step":"running",...} and waits for "migrated" on stdin (the test moves the phone), then prints
// {"step":"moved",...} and {"step":"done"}; on a failure it says what on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { onDesktopPage, phonePoint, stdinLines } from './chromium.mjs';

const USAGE = 'usage: node move.mjs --url http://HOST:PORT/#token=TOKEN --to SITE [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      to: { type: 'string' },
      'screenshot-dir': { type: 'string' },
      chromium: { type: 'string' },
    },
  }));
} catch (e) {
  console.error(`move: ${e.message}\n${USAGE}`);
  process.exit(2);
}
if (!opts.url || !opts.to) {
  console.error(`move: --url and --to are required\n${USAGE}`);
  process.exit(2);
}
const TIMEOUT = 30000;
const STOPWATCH = [618, 1090];
const START = [518, 824];
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-move-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));
const awaitLine = stdinLines();

async function run(page) {
  page.setDefaultTimeout(TIMEOUT);
  const vmi = () => page.evaluate(() => ({
    state: window.vmi.state,
    frames: window.vmi.frames,
    url: window.vmi.url,
    moves: window.vmi.moves || [],
    intervals: window.vmi.frameIntervals || [],
    preparedHandoffs: window.vmi.preparedHandoffs || 0,
  }));
  const tap = async (at) => {
    const p = await phonePoint(page, at);
    await page.mouse.click(p.x, p.y);
  };
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  await page.waitForFunction(() => window.vmi && window.vmi.state === 'connected' && window.vmi.frames >= 1);
  await page.keyboard.press('Home');
  await tap(STOPWATCH);
  await page.waitForTimeout(500);
  const started = (await vmi()).frames;
  await tap(START);
  // The stopwatch runs: a second and a half of its frames, so the intervals kept (the last 20) are all its own.
  await page.waitForFunction((n) => window.vmi.frames >= n + 30, started, { timeout: TIMEOUT });
  await page.evaluate(() => {
    window.overlayShown = 0;
    const overlay = document.getElementById('conn-overlay');
    new MutationObserver(() => {
      if (!overlay.hidden) window.overlayShown++;
    }).observe(overlay, { attributes: true, attributeFilter: ['hidden'] });
  });
  const before = await vmi();
  emit({ step: 'running', url: before.url, interval_max_ms: Math.max(...before.intervals) });

  await awaitLine('migrated');
  await page.waitForFunction((n) => (window.vmi.moves || []).length > n && window.vmi.state === 'connected',
    before.moves.length, { timeout: TIMEOUT });
  const after = await vmi();
  const overlayShown = await page.evaluate(() => window.overlayShown);
  // The map follows at once: the phone's site is the new one, and its row shows the connection's own figure.
  const t0 = Date.now();
  await page.waitForFunction((to) => {
    const v = window.vmi;
    const row = [...document.querySelectorAll('#fm-sites tbody tr')].find((tr) => tr.cells[0].childNodes[1].textContent === to);
    return v.map && v.map.site === to && row && row.cells[2].textContent === document.getElementById('m-rtt').textContent;
  }, opts.to, { timeout: 5000 });
  const mapFollowedMs = Date.now() - t0;
  await page.screenshot({ path: join(shotDir, 'moved.png') });
  emit({
    step: 'moved',
    url: after.url,
    move: after.moves[after.moves.length - 1],
    // "one frame": the longest interval between frames in the second before the move
    interval_max_ms: Math.max(...before.intervals),
    overlay_shown: overlayShown,
    map_followed_ms: mapFollowedMs,
    // the Hello went on the connection the page opened while the phone's copy ran (make before break)
    prepared_handoffs: after.preparedHandoffs - before.preparedHandoffs,
  });
  emit({ step: 'done' });
}

const main = () => onDesktopPage(executablePath, shotDir, run);

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`move: ${e.stack || e}`);
    process.exit(1);
  },
);
