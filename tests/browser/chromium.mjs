// Debian's Chromium for the browser tests: the flags every run needs here (DEVELOPERS.md) and a profile of its own
// that goes with it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

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
