#!/usr/bin/env node
// The page's figures and site states, in Debian's Chromium: one round trip per site everywhere on the page (the
// connection indicator, the map's header and the table row of the phone's site show the same figure); a site that
// stops is shown down once the control plane says so, and shows no round trip; when the control plane cannot be
// asked, the states shown say how old they are and stop looking live.
//
//   node tests/browser/sites.mjs --url http://127.0.0.1:PORT/#token=TOKEN --other site-b --screenshot-dir DIR
//
// The test that runs it stops a site and the control service: the driver prints {"step":"figures",...} and waits
// for "other-down" on stdin, then prints {"step":"other_down",...} and waits for "control-down". One JSON line per
// step on stdout; on a failure it says what on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { onDesktopPage, runSteps, stdinLines } from './chromium.mjs';

const USAGE = 'usage: node sites.mjs --url http://HOST:PORT/#token=TOKEN --other SITE [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      other: { type: 'string' },
      'screenshot-dir': { type: 'string' },
      chromium: { type: 'string' },
    },
  }));
} catch (e) {
  console.error(`sites: ${e.message}\n${USAGE}`);
  process.exit(2);
}
if (!opts.url || !opts.other) {
  console.error(`sites: --url and --other are required\n${USAGE}`);
  process.exit(2);
}

const TIMEOUT = 30000;
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-sites-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));
const awaitLine = stdinLines();
let currentStep = 'launch';

const main = () => onDesktopPage(executablePath, shotDir, run);

/** What the page shows: the indicator, the map's header, and each table row (site, tags, round trip text). */
function shown(page) {
  return page.evaluate(() => {
    const v = window.vmi;
    const rows = [...document.querySelectorAll('#fm-sites tbody tr')].map((tr) => ({
      site: tr.cells[0].childNodes[1] ? tr.cells[0].childNodes[1].textContent : '',
      tags: [...tr.querySelectorAll('.tag')].map((t) => t.textContent),
      dot: tr.querySelector('.sdot') ? tr.querySelector('.sdot').className : '',
      rtt: tr.cells[2].textContent,
    }));
    return {
      state: v.state,
      quality: v.quality,
      indicator: document.getElementById('m-rtt').textContent,
      header: document.getElementById('fm-rtt').textContent,
      where: document.getElementById('fm-where').textContent,
      hint: document.getElementById('fm-hint').textContent,
      home: v.map && v.map.site,
      rows,
    };
  });
}

async function waitFor(page, what, pred) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const s = await shown(page);
    if (pred(s)) return s;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the page shows ${JSON.stringify(s)}`);
    await sleepMs(100);
  }
}

async function run(page) {
  page.setDefaultTimeout(TIMEOUT);
  currentStep = 'figures';
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  // One figure for the phone's site: the indicator, the header and its table row, read at one instant.
  const s = await waitFor(page, 'the map with both sites and one round trip everywhere', (p) => {
    const home = p.rows.find((r) => r.site === p.home);
    return p.state === 'connected' && p.rows.length === 2 && p.quality && p.quality.rttMs !== null && home &&
      home.rtt === `${p.quality.rttMs.toFixed(1)} ms` && p.indicator === home.rtt && `${p.header} ms` === home.rtt;
  });
  await page.screenshot({ path: join(shotDir, 'figures.png') });
  emit({ step: 'figures', ...s });

  await awaitLine('other-down');
  currentStep = 'other_down';
  const down = await waitFor(page, `${opts.other} shown down by the control plane, with no round trip`, (p) => {
    const row = p.rows.find((r) => r.site === opts.other);
    return row && row.tags.includes('down') && row.rtt === '–';
  });
  await page.screenshot({ path: join(shotDir, 'other-down.png') });
  emit({ step: 'other_down', ...down });

  await awaitLine('control-down');
  currentStep = 'control_down';
  const stale = await waitFor(page, 'the states marked as old, not live', (p) =>
    p.where.includes('as of') && p.rows.every((r) => r.dot.includes('unknown') && r.tags.includes('state unknown')));
  await page.screenshot({ path: join(shotDir, 'control-down.png') });
  emit({ step: 'control_down', ...stale });
  emit({ step: 'done' });
}

runSteps('sites', main, { limitMs: 180000, step: () => currentStep });
