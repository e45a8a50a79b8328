#!/usr/bin/env node
// The control service's operator dashboard in Debian's Chromium: a wrong token and a device's token are refused with
// the service's reason; the operator's token shows both sites on the map, healthy, with the phone counted; a live
// migration the test orders appears in the live list (the page stamps when it put the row there, so the test can
// compare with when the migration committed) and as an arc on the map, and the phone counts move; the phone's
// history shows the move and its checkpoint; the graphs fill from /metrics; the phone's site stopping shows as the
// site unhealthy and a failover in the live list; a token the service stops accepting
// sends the page back to its sign-in with the reason. Nothing on the page breaks its Content-Security-Policy.
//
//   VMI_OPERATOR_TOKEN=... VMI_DEVICE_TOKEN=... node tests/browser/dashboard.mjs --url http://127.0.0.1:PORT/dashboard \
//     --user alice --from site-a --to site-b --crashed bob --screenshot-dir DIR
//
// Tokens come in the environment, not argv. One JSON line per step on stdout; after {"step":"signed_in"} it waits
// for "migrated" on stdin (the test has ordered the migration and seen it commit), after {"step":"moved"} for
// "crashed" (the test crashed the other user's phone), after {"step":"graphs"} for "failed-over" (the test stopped
// the phone's site and saw its placement fail over). On a failure it says what on
// stderr and exits 1 (2 for bad arguments).
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { launchChromium, runSteps, stdinLines } from './chromium.mjs';
import { Scrapes, figuresOf, parseMetrics, quantileBetween } from '../../crates/vmi-control/dashboard/metrics.js';
import { niceStep, projection, siteState } from '../../crates/vmi-control/dashboard/map.js';

const USAGE =
  'usage: VMI_OPERATOR_TOKEN=T VMI_DEVICE_TOKEN=T node dashboard.mjs --url URL --user U --from SITE --to SITE --crashed U2 [--screenshot-dir DIR] [--chromium PATH]';
let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      user: { type: 'string' },
      from: { type: 'string' },
      to: { type: 'string' },
      crashed: { type: 'string' },
      'screenshot-dir': { type: 'string' },
      chromium: { type: 'string' },
    },
  }));
} catch (e) {
  console.error(`dashboard: ${e.message}\n${USAGE}`);
  process.exit(2);
}
const operator = process.env.VMI_OPERATOR_TOKEN;
const device = process.env.VMI_DEVICE_TOKEN;
if (!opts.url || !opts.user || !opts.from || !opts.to || !opts.crashed || !operator || !device) {
  console.error(`dashboard: --url, --user, --from, --to, --crashed and both tokens are required\n${USAGE}`);
  process.exit(2);
}

const TIMEOUT = 30000;
const executablePath = opts.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
const shotDir = resolve(opts['screenshot-dir'] || mkdtempSync(join(tmpdir(), 'vmi-dashboard-shots-')));
mkdirSync(shotDir, { recursive: true });
const emit = (obj) => console.log(JSON.stringify(obj));
const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));
const awaitLine = stdinLines();
let currentStep = 'unit';

/** The page's pure modules under node: the OpenMetrics parser, the quantile estimate, the series, the map's scale. */
function unit() {
  const text = [
    '# TYPE vmi_control_migrations counter',
    'vmi_control_migrations_total{outcome="committed"} 4',
    'vmi_control_migrations_total{outcome="aborted"} 1',
    'vmi_control_site_phones{site="site-a"} 2',
    'vmi_control_site_phones{site="site \\"b\\""} 1',
    'vmi_http_requests_total{route="/v1/sites",method="GET",status="200"} 10',
    'vmi_http_requests_total{route="/v1/sites",method="GET",status="401"} 2',
    'vmi_control_migration_downtime_seconds_bucket{le="0.001"} 0',
    'vmi_control_migration_downtime_seconds_bucket{le="0.002"} 2',
    'vmi_control_migration_downtime_seconds_bucket{le="0.004"} 4',
    'vmi_control_migration_downtime_seconds_bucket{le="+Inf"} 4',
    'vmi_control_migration_downtime_seconds_sum 0.01',
    'vmi_control_migration_downtime_seconds_count 4',
    'vmi_control_heartbeats_total 100',
    'process_cpu_seconds_total 1.5',
    'process_resident_memory_bytes 1.048576e7',
    '# EOF',
  ].join('\n');
  const fig = figuresOf(parseMetrics(text), 1000);
  assert.deepEqual(fig.sitePhones, { 'site-a': 2, 'site "b"': 1 });
  assert.equal(fig.phones, 3);
  assert.equal(fig.committed, 4);
  assert.equal(fig.aborted, 1);
  assert.deepEqual(fig.http, { '2xx': 10, '3xx': 0, '4xx': 2, '5xx': 0 });
  assert.equal(fig.rss, 10485760);
  assert.equal(figuresOf(parseMetrics(text), 1000, new Set(['site-a'])).phones, 1, 'a site without a lease left out');
  // Two of four at or under 2 ms, all four under 4 ms: p50 is 2 ms, p99 near 4 ms.
  assert.equal(quantileBetween([], fig.downtime.buckets, 0.5), 0.002);
  assert.ok(Math.abs(quantileBetween([], fig.downtime.buckets, 0.99) - 0.00396) < 1e-9);
  assert.equal(quantileBetween(fig.downtime.buckets, fig.downtime.buckets, 0.5), null, 'nothing new observed');
  const later = { ...fig, t: 1010, heartbeats: 120, cpu: 2.5, committed: 6 };
  const s = new Scrapes([fig, later]).series();
  assert.deepEqual(s.heartbeats, [null, 2]);
  assert.deepEqual(s.cpu, [null, 0.1]);
  assert.deepEqual(s.perMinute.committed, [null, 2]);
  // A counter that went down (the service restarted) is a gap, not a negative rate.
  assert.deepEqual(new Scrapes([later, { ...fig, t: 1020 }]).series().heartbeats, [null, null]);
  // The map: sites in one place still get a scale; a site without a lease is unhealthy whatever else it is.
  const p = projection([{ lat: 60, lon: 25 }]);
  assert.ok(Number.isFinite(p.kmPerPx) && p.kmPerPx > 0);
  assert.equal(siteState({ leased: false, healthy: true, draining: true }), 'unhealthy');
  assert.equal(siteState({ leased: true, healthy: true, draining: true }), 'draining');
  assert.equal(niceStep(0.13), 0.2);
}

/** What the page shows: the sign-in's error, the map's sites, the tables, the live list. */
function shown(page) {
  return page.evaluate(() => {
    const visible = (id) => !document.getElementById(id).hidden;
    return {
      login: visible('login'),
      error: visible('login-error') ? document.getElementById('login-error').textContent : null,
      sites: [...document.querySelectorAll('#map .site')].map((g) => ({
        id: g.dataset.site, state: g.dataset.state, phones: Number(g.dataset.phones),
      })),
      table: [...document.querySelectorAll('#sites-table tbody tr[data-site]')].map((tr) => ({
        id: tr.dataset.site, phones: Number(tr.dataset.phones), text: tr.innerText,
      })),
      tenants: [...document.querySelectorAll('#tenants-table tbody tr[data-tenant]')].map((tr) => ({
        name: tr.dataset.tenant, phones: Number(tr.dataset.phones),
      })),
      live: [...document.querySelectorAll('#live li')].map((li) => ({ ...li.dataset, text: li.innerText })),
      arcs: [...document.querySelectorAll('#map .arc')].map((g) => ({ id: g.dataset.arc, text: g.textContent })),
      status: document.getElementById('status-text').textContent,
      token: sessionStorage.getItem('vmi.dashboard.operator'),
      local: localStorage.length,
      href: location.href,
    };
  });
}

async function waitFor(page, what, pred, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const s = await shown(page);
    if (pred(s)) return s;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the page shows ${JSON.stringify(s)}`);
    await sleepMs(50);
  }
}

async function signIn(page, token) {
  await page.fill('#token', token);
  await page.click('#login-submit');
}

async function run(page, problems) {
  page.setDefaultTimeout(TIMEOUT);
  currentStep = 'refused';
  await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT });
  await waitFor(page, 'the sign-in form', (p) => p.login);
  // A wrong token and a device's token: refused by the service, with its reason, and not kept.
  await signIn(page, 'f'.repeat(64));
  const wrong = await waitFor(page, 'the wrong token refused', (p) => p.error && p.error.includes('401'));
  await page.screenshot({ path: join(shotDir, 'refused.png') });
  await signIn(page, device);
  const deviceRefused = await waitFor(page, "a device's token refused", (p) => p.error && p.error.includes('403'));
  assert.equal(deviceRefused.token, null, 'a refused token is not kept');
  emit({ step: 'refused', wrong: wrong.error, device: deviceRefused.error });

  currentStep = 'signed_in';
  await signIn(page, operator);
  const ready = await waitFor(page, 'both sites on the map, healthy, with the phone counted', (p) =>
    !p.login && p.sites.length === 2 && p.sites.every((s) => s.state === 'healthy') &&
    p.sites.find((s) => s.id === opts.from)?.phones >= 1 && p.table.length === 2 && p.tenants.length >= 1);
  const phonesOn = (p, id) => p.sites.find((s) => s.id === id)?.phones;
  const [fromBefore, toBefore] = [phonesOn(ready, opts.from), phonesOn(ready, opts.to)];
  await sleepMs(300); // the tenants and users tables' first answers
  await page.screenshot({ path: join(shotDir, 'overview.png') });
  emit({
    step: 'signed_in',
    sites: ready.sites,
    table: ready.table,
    tenants: ready.tenants,
    token_in_url: ready.href.includes(operator),
    token_kept: ready.token === operator,
    local_storage: ready.local,
  });

  await awaitLine('migrated');
  currentStep = 'seen';
  const isMove = (r) => r.kind === 'migration' && r.user === opts.user && r.from === opts.from && r.to === opts.to;
  const seen = await waitFor(page, 'the migration in the live list', (p) => p.live.some(isMove));
  const row = seen.live.find(isMove);
  emit({
    step: 'seen',
    shown_ms: Number(row.shownMs),
    id: Number(row.id),
    at_ms: Number(row.atMs),
    outcome: row.outcome,
    text: row.text,
    on_top: seen.live[0] === undefined ? false : seen.live[0].id === row.id,
    arc: seen.arcs.find((a) => a.id === `m${row.id}`) || null,
  });

  currentStep = 'moved';
  const moved = await waitFor(page, 'the phone counted on its new site', (p) =>
    phonesOn(p, opts.to) === toBefore + 1 && phonesOn(p, opts.from) === fromBefore - 1 &&
    p.table.find((t) => t.id === opts.to)?.phones === toBefore + 1);
  const movedMs = Date.now();
  await page.screenshot({ path: join(shotDir, 'migration.png') });
  emit({ step: 'moved', moved_ms: movedMs, sites: moved.sites, arcs: moved.arcs.length });

  // Another user's phone crashes: its site reports it with its next heartbeat, to the audit log.
  await awaitLine('crashed');
  currentStep = 'crash';
  const isCrash = (r) => r.kind === 'crash' && r.user === opts.crashed;
  const crashed = await waitFor(page, 'the crash in the live list', (p) => p.live.some(isCrash));
  const crash = crashed.live.find(isCrash);
  emit({ step: 'crash', shown_ms: Number(crash.shownMs), text: crash.text, site: crash.site });

  currentStep = 'history';
  await page.click('.tab[data-view="phone"]');
  await page.fill('#phone-user', opts.user);
  await page.click('#phone-form button[type="submit"]');
  await page.waitForFunction(
    ([to]) => document.getElementById('phone-now').dataset.site === to &&
      document.querySelectorAll('#phone-migrations tbody tr[data-id]').length >= 1 &&
      document.querySelectorAll('#phone-checkpoints tbody tr').length >= 1 &&
      !document.querySelector('#phone-checkpoints .empty-row'),
    [opts.to],
    { timeout: TIMEOUT },
  );
  const history = await page.evaluate(() => ({
    hash: location.hash,
    now: [...document.querySelectorAll('#phone-now div')].map((d) => d.innerText.replace('\n', ': ')),
    moves: [...document.querySelectorAll('#phone-migrations tbody tr')].map((tr) => tr.innerText),
    checkpoints: [...document.querySelectorAll('#phone-checkpoints tbody tr')].map((tr) => tr.innerText),
    crashes: document.getElementById('phone-crashes').textContent,
    segments: document.querySelectorAll('#timeline rect').length,
  }));
  await page.screenshot({ path: join(shotDir, 'history.png') });
  emit({ step: 'history', ...history });

  currentStep = 'history_crash';
  await page.fill('#phone-user', opts.crashed);
  await page.click('#phone-form button[type="submit"]');
  await page.waitForFunction(
    ([user]) => document.getElementById('phone-result').dataset.user === user &&
      document.getElementById('phone-crashes').textContent.startsWith('Crashes: 1 '),
    [opts.crashed],
    { timeout: TIMEOUT },
  );
  const crashHistory = await page.evaluate(() => ({
    user: document.getElementById('phone-result').dataset.user,
    crashes: document.getElementById('phone-crashes').textContent,
    marks: document.querySelectorAll('#timeline .crash-mark').length,
  }));
  await page.screenshot({ path: join(shotDir, 'history-crash.png') });
  emit({ step: 'history_crash', ...crashHistory });

  currentStep = 'graphs';
  await page.click('.tab[data-view="graphs"]');
  // Four scrapes at 5 s: about 15 s of figures since the sign-in.
  await page.waitForFunction(() => window.vmiDashboard.scrapes >= 4, null, { timeout: 60000 });
  await page.waitForFunction(() => document.querySelectorAll('#graphs .graph canvas').length === 6, null, { timeout: TIMEOUT });
  await sleepMs(200);
  const graphs = await page.evaluate(() => ({
    scrapes: window.vmiDashboard.scrapes,
    charts: [...document.querySelectorAll('#graphs .graph')].map((g) => ({
      title: g.querySelector('h3').textContent,
      width: g.querySelector('canvas').getBoundingClientRect().width,
      series: [...g.querySelectorAll('.u-legend .u-series .u-label')].map((l) => l.textContent).filter(Boolean),
    })),
    last: window.vmiDashboard.lastFigures,
  }));
  await page.screenshot({ path: join(shotDir, 'graphs.png'), fullPage: true });
  emit({ step: 'graphs', ...graphs });

  // The phone's site stops: the page shows it unhealthy, and the failover (counted at the next scrape of /metrics:
  // the control service keeps no failover log) as an event.
  currentStep = 'failover';
  await page.click('.tab[data-view="overview"]');
  await awaitLine('failed-over');
  const isFailover = (r) => r.kind === 'failover' && r.user === opts.user;
  const failover = await waitFor(page, 'the failover in the live list and the stopped site unhealthy', (p) =>
    p.live.some(isFailover) && p.sites.find((s) => s.id === opts.to)?.state === 'unhealthy', 20000);
  const event = failover.live.find(isFailover);
  await page.screenshot({ path: join(shotDir, 'failover.png') });
  emit({
    step: 'failover',
    shown_ms: Number(event.shownMs),
    text: event.text,
    from: event.from,
    to: event.to,
    source: event.source,
    arc: failover.arcs.find((a) => a.id === `f${event.id}`) || null,
    failovers: failover.live.filter((r) => r.kind === 'failover').length,
    site_events: failover.live.filter((r) => r.kind === 'site').map((r) => r.text),
    sites: failover.sites,
  });
  // The counter moves too, at the next scrape: the page must not show that failover a second time.
  await page.waitForFunction(() => window.vmiDashboard.failovers.counted >= 1, null, { timeout: 15000 });
  await sleepMs(2500);
  const once = await page.evaluate(() => ({
    ...window.vmiDashboard.failovers,
    shown: document.querySelectorAll('#live li[data-kind="failover"]').length,
  }));
  emit({ step: 'failover_once', ...once });

  // The phone's history now has the failover: a row, and a mark on its timeline.
  currentStep = 'history_failover';
  await page.click('.tab[data-view="phone"]');
  await page.fill('#phone-user', opts.user);
  await page.click('#phone-form button[type="submit"]');
  await page.waitForFunction(
    ([user]) => document.getElementById('phone-result').dataset.user === user &&
      document.querySelectorAll('#phone-migrations tbody tr[data-kind="failover"]').length === 1,
    [opts.user],
    { timeout: TIMEOUT },
  );
  const afterFailover = await page.evaluate(() => ({
    rows: [...document.querySelectorAll('#phone-migrations tbody tr')].map((tr) => tr.innerText),
    marks: document.querySelectorAll('#timeline .failover-mark').length,
    now: document.getElementById('phone-now').dataset.site,
  }));
  await page.screenshot({ path: join(shotDir, 'history-failover.png') });
  emit({ step: 'history_failover', ...afterFailover });

  // A token the service no longer takes (here: one it never issued, put where the page keeps its token) sends the
  // page back to the sign-in with the reason.
  currentStep = 'expired';
  await page.evaluate(() => sessionStorage.setItem('vmi.dashboard.operator', 'e'.repeat(64)));
  await page.reload({ waitUntil: 'load' });
  const expired = await waitFor(page, 'the sign-in again, with the reason', (p) => p.login && p.error && p.error.includes('401'));
  assert.equal(expired.token, null, 'the refused token is forgotten');
  emit({ step: 'expired', error: expired.error });

  emit({ step: 'problems', problems });
  emit({ step: 'done' });
}

async function main() {
  unit();
  emit({ step: 'unit' });
  currentStep = 'launch';
  const browser = await launchChromium(executablePath, { viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
  const page = browser.context.pages()[0] || (await browser.context.newPage());
  // Whatever the page's Content-Security-Policy blocks, and any script error, is a failure the test reports.
  const problems = [];
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // Refused sign-ins are 401/403 answers the browser logs as failed loads: expected here.
    if (m.type() === 'error' && !/status of 40[13]/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  try {
    await run(page, problems);
  } catch (e) {
    await page.screenshot({ path: join(shotDir, 'failure.png') }).catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
}

runSteps('dashboard', main, { limitMs: 240000, step: () => currentStep });
