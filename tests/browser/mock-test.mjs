#!/usr/bin/env node
// The browser terminal in Chromium against mock-site.mjs (no Rust needed): runs e2e.mjs
// against the mock, then the behaviours e2e.mjs does not reach: inputs lost with a
// dropped connection are resent, Redirect resumes without a full frame, a reload
// resumes from sessionStorage with the token from localStorage, latency pings stop
// while asleep, and an unknown token ends in 'closed' with the error shown (the token this
// browser keeps left as it was).
//
//   node tests/browser/mock-test.mjs [--chromium /usr/bin/chromium]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

import { CHROMIUM_FLAGS } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: opts } = parseArgs({ options: { chromium: { type: 'string' } } });
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 20000;
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));

let passed = 0;
let failed = 0;
async function test(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n     ${(e && e.message) || e}`);
  }
}
function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function startMock() {
  const child = spawn(process.execPath, [join(here, 'mock-site.mjs'), '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      if (buf.includes('\n')) resolve(buf.split('\n')[0]);
    });
    child.on('exit', (c) => reject(new Error(`mock site exited ${c}`)));
  });
  const info = JSON.parse(line);
  const base = new URL(info.url).origin;
  return {
    ...info,
    base,
    kill: () => child.kill(),
    state: async () => (await fetch(info.hash_url)).json(),
    post: async (path) => (await fetch(base + path, { method: 'POST' })).json(),
  };
}

async function runE2e(mock, shots) {
  const child = spawn(
    process.execPath,
    [join(here, 'e2e.mjs'), '--url', mock.url, '--mail-url', mock.mail_url, '--screenshot-dir', shots, '--chromium', executablePath, '--skip-history'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise((r) => child.on('exit', r));
  return { code, lines: out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)), err };
}

const shots = mkdtempSync(join(tmpdir(), 'vmi-mock-shots-'));
const userDataDir = mkdtempSync(join(tmpdir(), 'vmi-mock-chromium-'));
let mock = await startMock();
let context;

try {
  await test('e2e.mjs passes against the mock site, its last hash is the phone’s', async () => {
    const r = await runE2e(mock, shots);
    check(r.code === 0, `e2e.mjs exited ${r.code}: ${r.err}`);
    const steps = r.lines.map((l) => l.step);
    check(JSON.stringify(steps) === JSON.stringify(['home', 'typed', 'notified', 'inbox', 'done']), `steps ${steps}`);
    check(r.lines[2].bytes_while_asleep === 0, `bytes_while_asleep ${r.lines[2].bytes_while_asleep}`);
    const s = await mock.state();
    check(s.text === 'Hello from Chromium', `the phone's notes say ${JSON.stringify(s.text)}`);
    check(r.lines[3].screen_hash === s.hash, `inbox hash ${r.lines[3].screen_hash}, phone ${s.hash}`);
  });

  mock.kill();
  mock = await startMock();
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 900, height: 1200 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const vmi = () => page.evaluate(() => ({ ...window.vmi, notifications: window.vmi.notifications.length }));
  const waitFor = async (what, pred) => {
    const end = Date.now() + TIMEOUT;
    for (;;) {
      const v = await vmi();
      if (pred(v)) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
      await sleepMs(50);
    }
  };
  const settled = async (what) => {
    let last = -1;
    let since = Date.now();
    return waitFor(what, (v) => {
      if (v.frames !== last) {
        last = v.frames;
        since = Date.now();
      }
      return v.state === 'connected' && v.pendingInputs === 0 && Date.now() - since > 400;
    });
  };
  const sameScreen = async () => {
    const h = await page.evaluate(() => window.vmi.screenHash());
    const s = await mock.state();
    check(h === s.hash, `page hash ${h}, phone hash ${s.hash}`);
    return s;
  };
  const tap = async (px, py) => {
    const r = await page.evaluate(() => document.getElementById('screen').getBoundingClientRect().toJSON());
    await page.mouse.click(r.left + ((px + 0.5) * r.width) / 720, r.top + ((py + 0.5) * r.height) / 1280);
  };

  await test('connects, paints the phone’s screen exactly, token leaves the address bar', async () => {
    // On every animation frame: the outage overlay never covers the screen of a connected session (it would take
    // the touches meant for the phone).
    await page.addInitScript(() => {
      window.overlayOverConnected = 0;
      const look = () => {
        const overlay = document.getElementById('conn-overlay');
        if (window.vmi && window.vmi.state === 'connected' && overlay && !overlay.hidden) window.overlayOverConnected++;
        requestAnimationFrame(look);
      };
      requestAnimationFrame(look);
    });
    await page.goto(mock.url);
    // Settled means no new frame for a while; under load that can hold before the first frame has come.
    await waitFor('the first frame', (v) => v.frames > 0);
    await settled('the first frame');
    await sameScreen();
    check(!page.url().includes('token'), `address bar: ${page.url()}`);
    check((await page.evaluate(() => localStorage.getItem('vmi.token'))) === 'tok-alice', 'token not kept');
    const covered = await page.evaluate(() => window.overlayOverConnected);
    check(covered === 0, `the outage overlay covered a connected screen for ${covered} animation frames`);
  });

  await test('latency is measured while awake', async () => {
    await waitFor('latencyMs', (v) => typeof v.latencyMs === 'number');
  });

  await test('inputs lost with a dropped connection are resent after reconnecting', async () => {
    await tap(274, 1090);
    await settled('Notes');
    await page.keyboard.type('ab');
    await settled('ab');
    await mock.post('/mock/stall');
    await page.keyboard.type('cd');
    await sleepMs(300);
    check((await vmi()).pendingInputs === 2, 'cd should be unacknowledged');
    const sessions = (await mock.state()).stats.sessions;
    await mock.post('/mock/drop');
    await waitFor('a new session', (v) => v.state === 'connected' && v.pendingInputs === 0);
    await settled('cd');
    const s = await sameScreen();
    check(s.text === 'abcd', `phone text ${JSON.stringify(s.text)}`);
    check(s.stats.sessions === sessions + 1, 'one new session');
    const hello = s.stats.helloResumes.at(-1);
    check(hello.resume > 0 && hello.resumed, `resume ${JSON.stringify(hello)}`);
    const covered = await page.evaluate(() => window.overlayOverConnected);
    check(covered === 0, `the outage overlay covered a connected screen for ${covered} animation frames`);
  });

  await test('Redirect: reconnects with Resume; a current screen is not resent; no overlay over a planned move', async () => {
    const before = await vmi();
    const frameBytes = (await mock.state()).stats.frameBytes;
    // Every change of the outage overlay from now on (a planned move must not show it, even for a frame).
    await page.evaluate(() => {
      window.overlayShown = 0;
      const overlay = document.getElementById('conn-overlay');
      new MutationObserver(() => {
        if (!overlay.hidden) window.overlayShown++;
      }).observe(overlay, { attributes: true, attributeFilter: ['hidden'] });
    });
    // The new site takes 400 ms to welcome: long enough for the page to show what it shows while moving.
    await mock.post('/mock/redirect?welcome_after_ms=400');
    await waitFor('the move shown', (v) => v.state === 'moving');
    await page.waitForSelector('#move-chip', { state: 'visible', timeout: 2000 });
    await waitFor('the redirected session', (v) => v.state === 'connected' && v.url !== null);
    check((await page.evaluate(() => window.overlayShown)) === 0, 'the outage overlay showed over a planned move');
    await page.waitForSelector('#move-chip', { state: 'hidden', timeout: 2000 });
    await sleepMs(500);
    const s = await mock.state();
    check(s.stats.helloResumes.at(-1).resumed === true, 'not resumed');
    check(s.stats.frameBytes === frameBytes, `a frame was resent (${s.stats.frameBytes - frameBytes} bytes)`);
    check((await vmi()).lastSeq === before.lastSeq, 'seq moved without a frame');
    await page.keyboard.type('e');
    await settled('e');
    const s2 = await sameScreen();
    check(s2.text === 'abcde', `phone text ${JSON.stringify(s2.text)}`);
  });

  await test('no pings while asleep; notifications still arrive; wake repaints', async () => {
    await page.click('#sleep-btn');
    await waitFor('asleep', (v) => v.state === 'asleep');
    await sleepMs(300);
    const pings = (await mock.state()).stats.pings;
    const v0 = await vmi();
    await fetch(mock.mail_url, { method: 'POST', body: JSON.stringify({ from: 'bob@example.com', subject: 'Hi', body: '' }) });
    await waitFor('the notification', (v) => v.notifications > v0.notifications);
    await sleepMs(4500);
    const v1 = await vmi();
    check((await mock.state()).stats.pings === pings, 'pinged while asleep');
    check(v1.frames === v0.frames, 'a frame arrived while asleep');
    check(await page.isVisible('#lock-notes .lock-note'), 'no notification on the lock screen');
    await page.click('#sleep-overlay'); // a tap on the dark screen wakes
    await waitFor('awake with a new frame', (v) => v.state === 'connected' && v.frames > v1.frames);
    await settled('wake');
    await sameScreen();
  });

  await test('a reload resumes from sessionStorage with the token from localStorage', async () => {
    const seq = (await vmi()).lastSeq;
    await page.reload();
    await settled('after reload');
    const s = await sameScreen();
    const hello = s.stats.helloResumes.at(-1);
    check(hello.resume === seq, `resume seq ${hello.resume}, expected ${seq}`);
    check((await vmi()).lastSeq > seq, 'frame seq continues after the resume');
  });

  await test('an outage says what happens (tries, the next one, the phone safe) and Retry now reconnects', async () => {
    await mock.post('/mock/down');
    await waitFor('reconnecting', (v) => v.state === 'reconnecting' && v.attempts >= 3);
    await page.waitForSelector('#retry-btn', { state: 'visible', timeout: 5000 });
    const said = await page.evaluate(() => ({
      detail: document.getElementById('conn-detail').textContent,
      safe: document.getElementById('conn-safe').textContent,
      text: document.getElementById('conn-text').textContent,
    }));
    check(/tries so far/.test(said.detail), `detail ${JSON.stringify(said)}`);
    check(/phone is safe/.test(said.safe), `safe ${JSON.stringify(said)}`);
    // Back, with the next try seconds away: Retry now connects at once.
    const waiting = await waitFor('a back-off of a second or more', (v) => v.nextRetryAt && v.nextRetryAt - Date.now() > 1000);
    await mock.post('/mock/up');
    const before = (await mock.state()).stats.sessions;
    await page.click('#retry-btn');
    await waitFor('connected again', (v) => v.state === 'connected');
    check(Date.now() < waiting.nextRetryAt, 'connected only when the back-off ran out, not by Retry now');
    check((await mock.state()).stats.sessions === before + 1, 'Retry now did not connect');
    await page.waitForSelector('#retry-btn', { state: 'hidden', timeout: 2000 });
  });

  await test('a Redirect in answer to Hello (phone elsewhere) is followed', async () => {
    await mock.post('/mock/redirect-next-hello');
    await page.reload();
    await settled('after the redirect');
    await sameScreen();
    check((await mock.state()).stats.helloRedirects === 1, 'the mock did not redirect');
  });

  await test('keys: Backspace edits, Home goes home, the Back and Home buttons send keys', async () => {
    await page.keyboard.type('xy');
    await page.keyboard.press('Backspace');
    await settled('Backspace');
    check((await mock.state()).text === 'abcdex', `phone text ${JSON.stringify((await mock.state()).text)}`);
    await page.keyboard.press('Home');
    await settled('home');
    check((await mock.state()).app === 'home', 'not home');
    await tap(274, 1090);
    await settled('Notes again');
    check((await mock.state()).app === 'notes', 'Notes did not open');
    await page.click('#back-btn');
    await settled('back button');
    check((await mock.state()).app === 'home', 'Back did not go home');
    await sameScreen();
  });

  await test('an unknown token: closed, error shown, no reconnect loop', async () => {
    const p2 = await context.newPage();
    await p2.goto(mock.url.replace('tok-alice', 'nope'));
    const end = Date.now() + TIMEOUT;
    let v;
    while (Date.now() < end) {
      v = await p2.evaluate(() => ({ state: window.vmi.state, error: window.vmi.error }));
      if (v.state === 'closed') break;
      await sleepMs(50);
    }
    check(v.state === 'closed', `state ${v.state}`);
    check(/not allowed/.test(v.error), `error ${v.error}`);
    await p2.waitForSelector('#error', { state: 'visible', timeout: 2000 }); // the DOM follows within 50 ms
    // The bad link did not replace the device this browser keeps, and the page says how to get back to it.
    check((await p2.evaluate(() => localStorage.getItem('vmi.token'))) === 'tok-alice', 'a bad link replaced the token');
    check(/own device still works/.test(v.error || ''), `error ${v.error}`);
    const sessions = (await mock.state()).stats.sessions;
    await sleepMs(1500);
    check((await mock.state()).stats.sessions === sessions, 'reconnected after Unauthorized');
    await p2.close();
  });

  await test('a close code alone (4001, its Error lost) ends the session for good', async () => {
    const p3 = await context.newPage();
    await p3.goto(mock.url.replace('tok-alice', 'silent-refusal'));
    const end = Date.now() + TIMEOUT;
    let state;
    while (Date.now() < end) {
      state = await p3.evaluate(() => window.vmi.state);
      if (state === 'closed') break;
      await sleepMs(50);
    }
    check(state === 'closed', `state ${state}`);
    const refusals = (await mock.state()).stats.silentRefusals;
    check(refusals === 1, `refusals ${refusals}`);
    // A reconnect would be another refusal; the first backoff step is well under this.
    await sleepMs(1500);
    const after = (await mock.state()).stats.silentRefusals;
    check(after === refusals, `reconnected after close 4001: ${after} refusals`);
    await p3.close();
  });

  await test('no page errors', async () => {
    check(errors.length === 0, errors.join('\n'));
  });
} finally {
  if (context) await context.close().catch(() => {});
  mock.kill();
  rmSync(userDataDir, { recursive: true, force: true });
  rmSync(shots, { recursive: true, force: true });
}

console.log(`mock: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
