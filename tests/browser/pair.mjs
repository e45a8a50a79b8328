#!/usr/bin/env node
// Pairing a browser by code, in Debian's Chromium: a browser with no device is shown the pairing form; a wrong code
// is refused in plain words; the right one pairs the browser, which then opens the phone.
//
//   VMI_PAIR_CODE=CODE node tests/browser/pair.mjs --url http://127.0.0.1:PORT/ --screenshot-dir DIR
//
// Prints {"step":"form"} {"step":"refused","error":...} {"step":"paired","frames":N} {"step":"done"}; on a failure
// it says what on stderr and exits 1 (2 for bad arguments).
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { onDesktopPage } from './chromium.mjs';

const USAGE = 'usage: VMI_PAIR_CODE=CODE node pair.mjs --url http://HOST:PORT/ [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: { url: { type: 'string' }, 'screenshot-dir': { type: 'string' }, chromium: { type: 'string' } },
  }));
} catch (e) {
  console.error(`pair: ${e.message}\n${USAGE}`);
  process.exit(2);
}
const code = process.env.VMI_PAIR_CODE;
if (!opts.url || !code) {
  console.error(`pair: --url and VMI_PAIR_CODE are required\n${USAGE}`);
  process.exit(2);
}
const TIMEOUT = 30000;
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-pair-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));

async function run(page) {
  page.setDefaultTimeout(TIMEOUT);
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  await page.locator('#pair-panel').waitFor({ state: 'visible' });
  await page.screenshot({ path: join(shotDir, 'form.png') });
  emit({ step: 'form' });

  await page.fill('#pair-code', '00000-00000');
  await page.click('#pair-submit');
  await page.waitForFunction(() => document.getElementById('pair-error').textContent.length > 0);
  const error = await page.textContent('#pair-error');
  await page.screenshot({ path: join(shotDir, 'refused.png') });
  emit({ step: 'refused', error });

  await page.fill('#pair-code', code);
  await page.fill('#pair-name', 'Test browser');
  await page.click('#pair-submit');
  await page.waitForFunction(() => window.vmi && window.vmi.state === 'connected' && window.vmi.frames >= 1, null, {
    timeout: TIMEOUT,
  });
  const frames = await page.evaluate(() => window.vmi.frames);
  const formHidden = await page.evaluate(() => document.getElementById('pair-panel').hidden);
  await page.screenshot({ path: join(shotDir, 'paired.png') });
  emit({ step: 'paired', frames, form_hidden: formHidden });
  emit({ step: 'done' });
}

const main = () => onDesktopPage(executablePath, shotDir, run);

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`pair: ${e.stack || e}`);
    process.exit(1);
  },
);
