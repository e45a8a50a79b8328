// Debian's Chromium for the browser tests: the flags every run needs here (DEVELOPERS.md) and a profile of its own
// that goes with it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { chromium } from 'playwright-core';

/** Headless Chromium on these machines: no sandbox, no GPU, nothing fetched in the background. */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

/**
 * Starts Chromium at `executablePath` with a fresh profile and `options` (viewport, device emulation): `{context,
 * close}`, `close` ending the browser and removing the profile. A browser that does not start throws an Error
 * that says so and what to run.
 */
export async function launchChromium(executablePath, options) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'vmi-chromium-'));
  const remove = () => rmSync(userDataDir, { recursive: true, force: true });
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: CHROMIUM_FLAGS,
      timeout: 30000,
      ...options,
    });
  } catch (e) {
    remove();
    throw new Error(`cannot start Chromium at ${executablePath}: ${e.message.split('\n')[0]} (run scripts/setup)`);
  }
  const close = async () => {
    await context.close().catch(() => {});
    remove();
  };
  return { context, close };
}

/**
 * The lines a test writes on the driver's stdin, one at a time: `awaitLine(want)` resolves when the next line is
 * `want` and throws an Error naming what came instead (another line, or the end of stdin).
 */
export function stdinLines() {
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  return async (want) => {
    const { value, done } = await lines.next();
    if (done || value.trim() !== want) throw new Error(`expected "${want}" on stdin, got ${done ? 'its end' : `"${value}"`}`);
  };
}

/** Where the phone's pixel (`px`, `py`) is on the page: the centre of that pixel of the screen canvas, in CSS px. */
export function phonePoint(page, [px, py]) {
  return page.evaluate(
    ([x, y]) => {
      const r = document.getElementById('screen').getBoundingClientRect();
      return { x: r.left + ((x + 0.5) * r.width) / window.vmi.width, y: r.top + ((y + 0.5) * r.height) / window.vmi.height };
    },
    [px, py],
  );
}

/**
 * Runs `run(page)` on the first page of a fresh Chromium with a 1280×1000 desktop viewport, and closes it after; a
 * failure leaves `failure.png` in `shotDir` and is thrown on.
 */
export async function onDesktopPage(executablePath, shotDir, run) {
  const browser = await launchChromium(executablePath, { viewport: { width: 1280, height: 1000 }, deviceScaleFactor: 1 });
  const page = browser.context.pages()[0] || (await browser.context.newPage());
  try {
    await run(page);
  } catch (e) {
    await page.screenshot({ path: join(shotDir, 'failure.png') }).catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
}

/** A step's failure worth its message alone (no stack): what the page showed against what the step expected. */
export class StepError extends Error {}

/** Fails the current step with `msg`. */
export function fail(msg) {
  throw new StepError(msg);
}

/**
 * Runs a driver's `main` under a watchdog and exits: 0 when it ends; 1 when it throws or runs longer than
 * `limitMs`, naming the step it was at (`step()`); `onFailure()` then prints what else helps (page errors,
 * screenshots).
 */
export function runSteps(name, main, { limitMs, step, onFailure = () => {} }) {
  const watchdog = setTimeout(() => {
    console.error(`${name}: FAILED at step '${step()}': the whole run took over ${limitMs / 1000} s`);
    process.exit(1);
  }, limitMs);
  watchdog.unref();
  main().then(
    () => process.exit(0),
    (e) => {
      const why = e instanceof StepError ? e.message : (e && e.stack) || String(e);
      console.error(`${name}: FAILED at step '${step()}': ${why}`);
      onFailure();
      process.exit(1);
    },
  );
}
