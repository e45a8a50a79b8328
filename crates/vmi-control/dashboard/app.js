// The operator dashboard: sign-in with the operator token, then the control service polled for what the views show
// (the migration log every 250 ms so a migration is on screen well within a second, the audit log's failovers and
// crashes every 500 ms, the sites every second, the tenants and users every few seconds, /metrics every 5 s for
// the graphs).
import { HttpError, Refused, forgetToken, get, seg, storeToken, storedToken, tokenFrom } from './api.js';
import { Charts } from './charts.js';
import { ARC_MS, SiteMap, ago, loadOf, siteState } from './map.js';
import { Scrapes, figuresOf, parseMetrics } from './metrics.js';

const MIGRATIONS_EVERY_MS = 250;
const AUDIT_EVERY_MS = 500;
/**
 * Newest audit entries read by each poll (by id, which the service's store reads cheaply; a time filter would scan
 * the whole log). More entries than this within one poll (a flood of refusals) can hide a failover or a crash from
 * the live list; the phone history asks by user and still shows it.
 */
const AUDIT_PAGE = 200;
/** How long a failover the counter shows waits for its audit entry before it is shown as a bare count. */
const FAILOVER_GRACE_MS = 2000;
const SITES_EVERY_MS = 1000;
const TENANTS_EVERY_MS = 5000;
const USERS_EVERY_MS = 15000;
const METRICS_EVERY_MS = 5000;
const PHONE_EVERY_MS = 10000;
const LIVE_KEPT = 200;
const SCRAPES_KEY = 'vmi.dashboard.scrapes';

const $ = (id) => document.getElementById(id);

const state = {
  generation: 0, // bumped at sign-out: pollers of an older generation stop
  sites: [],
  siteStates: null, // Map id -> state word, after the first listing
  lastMigration: null, // newest migration id seen; null until the first poll
  lastFailovers: null, // the failover counter at the last scrape
  lastAudit: null, // newest audit entry id seen; null until the first poll
  failoversAudited: 0, // FAILOVER entries seen since sign-in
  failoversCounted: 0, // the counter's increase since sign-in
  failoversUnlogged: 0, // of those, shown from the counter alone
  users: [],
  tenants: [],
  lastOk: 0,
  failingSince: 0,
  lastError: '',
  phoneUser: null,
  scrapes: new Scrapes(),
  scrapeCount: 0,
};

const map = new SiteMap($('map'));
const charts = new Charts($('graphs'));

// What a test (tests/browser/dashboard.mjs) reads besides the page itself.
window.vmiDashboard = {
  get scrapes() {
    return state.scrapeCount;
  },
  get sitesListed() {
    return state.siteStates !== null;
  },
  get lastMigration() {
    return state.lastMigration;
  },
  /** Failovers: the counter's increase since sign-in, those the audit log named, those shown from the count alone. */
  get failovers() {
    return { counted: state.failoversCounted, audited: state.failoversAudited, unlogged: state.failoversUnlogged };
  },
  /** The newest point of each graph's main line. */
  get lastFigures() {
    const s = state.scrapes.series();
    const last = (xs) => (xs.length ? xs[xs.length - 1] : null);
    return {
      phones: last(s.phones),
      committedPerMinute: last(s.perMinute.committed),
      downtimeP50Ms: last(s.downtime.p50),
      heartbeatsPerS: last(s.heartbeats),
      http2xxPerS: last(s.http['2xx']),
      cpuCores: last(s.cpu),
      rssMiB: last(s.rssMiB),
    };
  },
};

// ---- formatting ----

const pad = (n, w = 2) => String(n).padStart(w, '0');
function clock(ms, withMs = false) {
  const d = new Date(ms);
  const s = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMs ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
}
function dateTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ms)}`;
}
function bytes(n) {
  if (n === null || n === undefined) return '–';
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}
const downtime = (us) => `${(us / 1000).toFixed(1)} ms`;
/** "1 phone", "2 phones". */
const count = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** An element with `className` and text. */
function node(tag, className, content) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (content !== undefined) e.textContent = content;
  return e;
}

/** A table row of cells: strings, or [text, className], or elements. */
function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    if (c instanceof Node) td.appendChild(c);
    else if (Array.isArray(c)) {
      td.textContent = c[0];
      td.className = c[1];
    } else td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

function fillTable(table, rows, empty) {
  const body = table.tBodies[0];
  if (!rows.length) {
    const tr = document.createElement('tr');
    const td = node('td', 'empty-row', empty);
    td.colSpan = table.tHead.rows[0].cells.length;
    tr.appendChild(td);
    body.replaceChildren(tr);
  } else body.replaceChildren(...rows);
}

// ---- sign-in ----

function showLogin(reason) {
  $('login').hidden = false;
  $('tabs').hidden = true;
  $('status').hidden = true;
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  const error = $('login-error');
  error.hidden = !reason;
  error.textContent = reason || '';
  $('token').value = '';
  $('token').focus();
}

function refusedWords(e) {
  return `The control service refused the token (${e.status}): ${e.message}.`;
}

/** Back to the sign-in, with why: the token is forgotten, the pollers stop, the kept graphs are dropped. */
function signOut(reason) {
  state.generation++;
  forgetToken();
  sessionStorage.removeItem(SCRAPES_KEY);
  Object.assign(state, {
    sites: [], siteStates: null, lastMigration: null, lastFailovers: null, users: [], tenants: [],
    lastAudit: null, failoversAudited: 0, failoversCounted: 0, failoversUnlogged: 0,
    phoneUser: null, scrapes: new Scrapes(), scrapeCount: 0, lastOk: 0, failingSince: 0,
  });
  // Nothing of this session stays in the page for whoever signs in next.
  $('live').replaceChildren();
  $('live-empty').hidden = false;
  for (const id of ['sites-table', 'tenants-table', 'phone-migrations', 'phone-checkpoints', 'phone-audit']) {
    $(id).tBodies[0].replaceChildren();
  }
  $('phone-result').hidden = true;
  $('phone-note').textContent = '';
  $('users').replaceChildren();
  map.update([]);
  charts.clear();
  showLogin(reason);
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const token = tokenFrom($('token').value);
  const error = $('login-error');
  if (!token) {
    error.hidden = false;
    error.textContent = 'That is not an operator token: it is 64 hex digits, the "token" field of operator.json.';
    return;
  }
  $('login-submit').disabled = true;
  try {
    // An operator-only route: a device's or a tenant admin's token is refused here, not later.
    await get('/v1/tenants', { token });
    storeToken(token);
    start();
  } catch (e) {
    error.hidden = false;
    error.textContent = e instanceof Refused ? refusedWords(e) : `Cannot sign in: ${e.message}`;
  } finally {
    $('login-submit').disabled = false;
  }
});

$('logout').addEventListener('click', () => signOut(''));

// ---- polling ----

/** Runs `fn` now and then every `ms` after it ends, until a sign-out; a refusal signs out. */
function every(ms, fn) {
  const generation = state.generation;
  const tick = async () => {
    if (generation !== state.generation) return;
    try {
      await fn();
      if (generation !== state.generation) return;
      state.lastOk = Date.now();
      state.failingSince = 0;
    } catch (e) {
      if (generation !== state.generation) return;
      if (e instanceof Refused) {
        signOut(refusedWords(e));
        return;
      }
      if (!state.failingSince) state.failingSince = Date.now();
      state.lastError = e.message;
      console.warn('dashboard:', e.message);
    }
    showStatus();
    setTimeout(tick, ms);
  };
  tick();
}

function showStatus() {
  const dot = $('status-dot');
  const words = $('status-text');
  if (state.failingSince && Date.now() - state.failingSince > 3000) {
    dot.className = 'dot down';
    words.textContent = `${state.lastError || 'control service not answering'}${state.lastOk ? ` · showing ${clock(state.lastOk)}` : ''}`;
  } else if (state.failingSince) {
    dot.className = 'dot stale';
    words.textContent = 'retrying…';
  } else {
    dot.className = 'dot live';
    const phones = livePhones(state.sites);
    words.textContent = `live · ${count(state.sites.length, 'site')} · ${count(phones, 'phone')} · ${clock(state.lastOk)}`;
  }
}

function start() {
  $('login').hidden = true;
  $('tabs').hidden = false;
  $('status').hidden = false;
  try {
    state.scrapes = new Scrapes(JSON.parse(sessionStorage.getItem(SCRAPES_KEY) || '[]'));
  } catch {
    state.scrapes = new Scrapes();
  }
  route();
  every(SITES_EVERY_MS, pollSites);
  every(MIGRATIONS_EVERY_MS, pollMigrations);
  every(AUDIT_EVERY_MS, pollAudit);
  every(TENANTS_EVERY_MS, pollTenants);
  every(USERS_EVERY_MS, pollUsers);
  every(METRICS_EVERY_MS, pollMetrics);
  every(PHONE_EVERY_MS, async () => {
    if (state.phoneUser && !$('view-phone').hidden) await loadPhone(state.phoneUser, false);
  });
}

// ---- live list ----

/** Puts an event at the top of the live list: `fresh` ones flash (those seen happen, not read from the log). */
function liveEvent({ kind, badge, atMs, text, figure, title, data, fresh }) {
  const li = node('li', fresh ? 'fresh' : '');
  li.dataset.kind = kind;
  li.dataset.shownMs = String(Date.now());
  li.dataset.at = String(atMs);
  for (const [k, v] of Object.entries(data || {})) li.dataset[k] = String(v);
  if (title) li.title = title;
  const time = node('span', 'time', clock(atMs));
  time.title = clock(atMs, true);
  li.append(time, node('span', `badge ${badge || kind}`, badge || kind));
  const what = node('span', 'what');
  for (const part of text) what.append(typeof part === 'string' ? part : node('b', '', part.b));
  li.append(what, node('span', 'figure', figure || ''));
  // In time order, newest first: a site's entries (crashes) arrive with its heartbeat, after newer events.
  const list = $('live');
  const after = [...list.children].find((other) => Number(other.dataset.at) <= atMs);
  list.insertBefore(li, after || null);
  while (list.children.length > LIVE_KEPT) list.lastElementChild.remove();
  $('live-empty').hidden = true;
}

function migrationEvent(m, fresh) {
  const committed = m.outcome === 'committed';
  liveEvent({
    kind: 'migration',
    badge: committed ? 'migration' : 'aborted',
    atMs: m.at_ms,
    text: [{ b: m.user }, ` ${m.from} → ${m.to}`],
    figure: committed ? downtime(m.downtime_us) : 'aborted',
    title: `${m.user}: ${m.from} → ${m.to}, ${m.outcome}, epoch ${m.epoch}\ndowntime ${downtime(m.downtime_us)}, ` +
      `total ${m.total_ms.toFixed(0)} ms, ${bytes(m.bytes)} sent${m.reason ? `\n${m.reason}` : ''}`,
    data: { id: m.id, user: m.user, from: m.from, to: m.to, outcome: m.outcome, atMs: m.at_ms },
    fresh,
  });
}

// ---- pollers ----

async function pollMigrations() {
  const log = await get('/v1/migrations?limit=50');
  const newest = log.reduce((n, m) => Math.max(n, m.id), 0);
  if (state.lastMigration === null) {
    // The log as it was at sign-in: listed, not animated.
    for (const m of [...log].reverse()) migrationEvent(m, false);
  } else {
    const fresh = log.filter((m) => m.id > state.lastMigration).sort((a, b) => a.id - b.id);
    for (const m of fresh) {
      migrationEvent(m, true);
      // Only the recent ones get an arc: after a long pause (a hidden tab) old moves are not news.
      if (Date.now() - m.at_ms < ARC_MS) map.migration(m);
    }
    if (state.phoneUser && fresh.some((m) => m.user === state.phoneUser) && !$('view-phone').hidden) {
      loadPhone(state.phoneUser, false);
    }
  }
  state.lastMigration = Math.max(state.lastMigration ?? 0, newest);
}

/** The site a FAILOVER audit entry says the phone left (its detail: "SITE lost its lease; ..."), or null. */
function failedFrom(entry) {
  const m = /^(?:reported by site \S+: )?(\S+) lost its lease/.exec(entry.detail || '');
  return m ? m[1] : null;
}

/** The audit log's failovers (written by the placer) and crashes (reported by sites), as they come. */
async function pollAudit() {
  const entries = await get(`/v1/audit?limit=${state.lastAudit === null ? 1000 : AUDIT_PAGE}`);
  const seen = state.lastAudit;
  // At sign-in, the last hour's; then each entry once, by id (a site's crash comes with its heartbeat, dated
  // before it arrives, but numbered when it does).
  const hourAgo = Date.now() - 3_600_000;
  const news = entries.filter((e) => (seen === null ? e.at_ms >= hourAgo : e.id > seen)).sort((a, b) => a.id - b.id);
  for (const e of news) {
    const fresh = seen !== null;
    if (e.action === 'FAILOVER') {
      const from = failedFrom(e);
      if (fresh) state.failoversAudited++;
      liveEvent({
        kind: 'failover',
        atMs: e.at_ms,
        text: [{ b: e.user || '?' }, from ? ` ${from} → ${e.site}` : ` → ${e.site}`],
        title: e.detail,
        data: { user: e.user || '', from: from || '', to: e.site || '', source: 'audit', id: e.id },
        fresh,
      });
      if (fresh && from && Date.now() - e.at_ms < ARC_MS) map.failover(e.id, e.user, from, e.site);
    } else if (e.action === 'CRASH') {
      liveEvent({
        kind: 'crash',
        atMs: e.at_ms,
        text: [{ b: e.user || '?' }, ` crashed on ${e.site}`],
        title: e.detail,
        data: { user: e.user || '', site: e.site || '', id: e.id },
        fresh,
      });
    }
    if (fresh && state.phoneUser === e.user && (e.action === 'FAILOVER' || e.action === 'CRASH') && !$('view-phone').hidden) {
      loadPhone(state.phoneUser, false);
    }
  }
  state.lastAudit = entries.reduce((n, e) => Math.max(n, e.id), state.lastAudit ?? 0);
}

/**
 * Failovers the counter shows that no audit entry explained within [`FAILOVER_GRACE_MS`] (the placer could not
 * write one): shown as a count, since which phones moved is not known here.
 */
function unloggedFailovers() {
  const n = state.failoversCounted - state.failoversAudited - state.failoversUnlogged;
  if (n <= 0) return;
  state.failoversUnlogged += n;
  const lost = state.sites.filter((s) => siteState(s) === 'unhealthy').map((s) => s.id);
  liveEvent({
    kind: 'failover',
    atMs: Date.now(),
    text: [{ b: count(n, 'phone') }, ` failed over${lost.length ? ` (${lost.join(', ')} lost the lease)` : ''}`],
    figure: `+${n}`,
    title: 'Counted by vmi_control_failovers_total, with no entry in the audit log: which phones moved is not known here.',
    data: { count: n, source: 'counter' },
    fresh: true,
  });
}

async function pollSites() {
  const sites = await get('/v1/sites');
  sites.sort((a, b) => a.id.localeCompare(b.id));
  const now = Date.now();
  const states = new Map(sites.map((s) => [s.id, siteState(s)]));
  if (state.siteStates) {
    for (const s of sites) {
      const before = state.siteStates.get(s.id);
      const after = states.get(s.id);
      if (before === after) continue;
      liveEvent({
        kind: 'site',
        atMs: now,
        text: before ? [{ b: s.id }, ` ${before} → ${after}`] : [{ b: s.id }, ` registered, ${after}`],
        title: s.degraded ? `degraded: ${s.degraded}` : s.url,
        data: { site: s.id, state: after },
        fresh: true,
      });
    }
  }
  state.siteStates = states;
  state.sites = sites;
  map.update(sites, now);
  const phones = livePhones(sites);
  const capacity = sites.reduce((n, s) => n + s.capacity, 0);
  const healthy = sites.filter((s) => states.get(s.id) === 'healthy').length;
  const silent = sites.filter((s) => states.get(s.id) === 'unhealthy').reduce((n, s) => n + s.phones, 0);
  $('map-summary').textContent = `${count(sites.length, 'site')} · ${healthy} healthy · ${count(phones, 'phone')}` +
    (silent ? ` · ${silent} unconfirmed` : '');
  $('map-summary').title = silent ? `${count(silent, 'phone')} on unhealthy sites, as they last said` : '';
  $('sites-total').textContent = `${phones} of ${capacity} places used`;
  fillTable($('sites-table'), sites.map((s) => siteRow(s, states.get(s.id), now)), 'No site has registered yet.');
}

/**
 * Phones on the sites that hold their lease: an unhealthy site's count is what it said last, and its phones may
 * have failed over elsewhere and be counted there too.
 */
function livePhones(sites) {
  return sites.filter((s) => siteState(s) !== 'unhealthy').reduce((n, s) => n + s.phones, 0);
}

function siteRow(s, st, now) {
  const load = loadOf(s);
  const bar = node('span', `bar${load >= 0.9 ? ' hot' : load >= 0.7 ? ' warm' : ''}`);
  const fill = node('span');
  // The CSSOM, not a style attribute: the Content-Security-Policy allows no inline style markup.
  fill.style.width = `${(load * 100).toFixed(1)}%`;
  bar.appendChild(fill);
  const loadCell = node('span');
  loadCell.append(bar, node('span', 'bar-label', `${Math.round(load * 100)} %`));
  const stateCell = node('span', `state ${st}`, st === 'degraded' ? `degraded: ${s.degraded}` : st);
  if (s.draining && st !== 'draining') stateCell.textContent += ', draining';
  const tr = row([
    s.id,
    stateCell,
    [`${s.phones} / ${s.capacity}`, st === 'unhealthy' ? 'num muted' : 'num'],
    loadCell,
    [s.last_heartbeat_ms ? `${ago(now - s.last_heartbeat_ms)} ago` : 'never', 'num'],
  ]);
  tr.title = st === 'unhealthy' ? `${s.url}\nphones: as its last heartbeat said` : s.url;
  tr.dataset.site = s.id;
  tr.dataset.phones = s.phones;
  return tr;
}

async function pollTenants() {
  state.tenants = await get('/v1/tenants');
  renderTenants();
}

async function pollUsers() {
  state.users = await get('/v1/users');
  const list = $('users');
  // A datalist of the first few hundred: enough to pick from, not a page of a hundred thousand options.
  list.replaceChildren(...state.users.slice(0, 500).map((u) => {
    const o = document.createElement('option');
    o.value = u.name;
    return o;
  }));
  renderTenants();
}

function renderTenants() {
  const usersOf = new Map();
  for (const u of state.users) usersOf.set(u.tenant ?? '', (usersOf.get(u.tenant ?? '') || 0) + 1);
  const rows = state.tenants
    .slice()
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((t) => {
      const quota = t.max_phones ?? null;
      const share = quota ? Math.min(1, t.phones / quota) : 0;
      const bar = node('span', `bar${share >= 0.9 ? ' hot' : share >= 0.7 ? ' warm' : ''}`);
      const fill = node('span');
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      bar.appendChild(fill);
      const quotaCell = node('span');
      if (quota === null) quotaCell.append(node('span', 'muted', 'unlimited'));
      else quotaCell.append(bar, node('span', 'bar-label', `${t.phones} of ${quota}`));
      const memory = t.max_memory_bytes ? `${bytes(t.memory_bytes)} / ${bytes(t.max_memory_bytes)}` : bytes(t.memory_bytes);
      const tr = row([t.name, [String(usersOf.get(t.name) || 0), 'num'], [String(t.phones), 'num'], quotaCell, [memory, 'num'], t.image]);
      tr.dataset.tenant = t.name;
      tr.dataset.phones = t.phones;
      return tr;
    });
  const untenanted = usersOf.get('') || 0;
  if (untenanted) {
    const tr = row([['(no tenant)', 'muted'], [String(untenanted), 'num'], ['–', 'num muted'], ['no quota', 'muted'], ['–', 'num muted'], 'phone']);
    tr.title = 'Phones of users without a tenant are not counted per tenant by the control service.';
    rows.push(tr);
  }
  const phones = state.tenants.reduce((n, t) => n + t.phones, 0);
  $('tenants-total').textContent =
    `${count(state.tenants.length, 'tenant')} · ${count(phones, 'admitted phone')} · ${count(state.users.length, 'user')}`;
  fillTable($('tenants-table'), rows, 'No tenants.');
}

async function pollMetrics() {
  const text = await get('/metrics', { text: true });
  const silent = new Set(state.sites.filter((s) => siteState(s) === 'unhealthy').map((s) => s.id));
  const fig = figuresOf(parseMetrics(text), Date.now() / 1000, silent);
  // Each failover is in the audit log; the counter catches one whose entry could not be written.
  if (state.lastFailovers !== null && fig.failovers > state.lastFailovers) {
    state.failoversCounted += fig.failovers - state.lastFailovers;
    const generation = state.generation;
    setTimeout(() => generation === state.generation && unloggedFailovers(), FAILOVER_GRACE_MS);
  }
  state.lastFailovers = fig.failovers;
  state.scrapes.add(fig);
  state.scrapeCount++;
  try {
    sessionStorage.setItem(SCRAPES_KEY, JSON.stringify(state.scrapes.samples));
  } catch {
    // Storage full: the graphs still have what is in memory.
  }
  const first = state.scrapes.samples[0];
  $('graphs-note').textContent = `Scraped from /metrics every 5 s while this tab is open: ${state.scrapes.samples.length} scrapes since ${clock(first.t * 1000)} (up to the last hour is kept in this tab).`;
  charts.draw(state.scrapes.series());
}

// ---- a phone's history ----

$('phone-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const user = $('phone-user').value.trim();
  if (user) location.hash = `#phone/${encodeURIComponent(user)}`;
});

/** `get`, with a 404 as null (no placement, no such user). */
async function maybe(path) {
  try {
    return await get(path);
  } catch (e) {
    if (e instanceof HttpError && e.status === 404) return null;
    throw e;
  }
}

async function loadPhone(user, announce = true) {
  state.phoneUser = user;
  $('phone-user').value = user;
  if (announce) $('phone-note').textContent = 'loading…';
  let placement;
  let moves;
  let checkpoints;
  let audit;
  try {
    [placement, moves, checkpoints, audit] = await Promise.all([
      maybe(`/v1/users/${seg(user)}/placement`),
      get(`/v1/migrations?user=${seg(user)}&limit=200`),
      maybe(`/v1/users/${seg(user)}/checkpoints`),
      get(`/v1/audit?user=${seg(user)}&limit=200`),
    ]);
  } catch (e) {
    if (e instanceof Refused) throw e;
    $('phone-note').textContent = `Cannot read ${user}'s history: ${e.message}`;
    return;
  }
  if (state.phoneUser !== user) return; // another user was asked for meanwhile
  const known = state.users.find((u) => u.name === user);
  if (!placement && !moves.length && !known) {
    $('phone-note').textContent = `No placement, migration or user named "${user}".`;
    $('phone-result').hidden = true;
    return;
  }
  $('phone-note').textContent = `as of ${clock(Date.now())}`;
  $('phone-result').hidden = false;
  $('phone-result').dataset.user = user;
  $('phone-title').textContent = `${user}’s phone`;
  checkpoints = checkpoints || [];
  // Placements change by migration (the migration log) and by failover (the audit log, written by the placer).
  const failovers = audit.filter((a) => a.action === 'FAILOVER').map((a) => ({
    at_ms: a.at_ms,
    from: failedFrom(a),
    to: a.site,
    epoch: Number((/epoch (\d+)/.exec(a.detail || '') || [])[1]) || null,
    detail: a.detail,
  }));
  const crashes = audit.filter((a) => a.action === 'CRASH');
  const committed = moves.filter((m) => m.outcome === 'committed');
  const site = placement && state.sites.find((s) => s.id === placement.site);
  const lastChange = Math.max(0, ...committed.map((m) => m.at_ms), ...failovers.map((f) => f.at_ms));
  const facts = [
    ['Tenant', known ? known.tenant || '(none)' : '?'],
    ['Runs on', placement ? `${placement.site}${site ? ` (${siteState(site)})` : ''}` : 'not placed'],
    ['Placement epoch', placement ? String(placement.epoch) : '–'],
    ['Moves', `${committed.length} committed, ${moves.length - committed.length} aborted`],
    ['Last placement change', lastChange ? `${ago(Date.now() - lastChange)} ago` : 'none logged'],
    ['Failovers', String(failovers.length)],
    ['Crashes', String(crashes.length)],
    ['Checkpoints', String(checkpoints.length)],
    ['Newest checkpoint', checkpoints.length ? `${ago(Date.now() - Math.max(...checkpoints.map((c) => c.at_ms)))} ago` : '–'],
    ['Median downtime', committed.length ? downtime(median(committed.map((m) => m.downtime_us))) : '–'],
  ];
  $('phone-now').replaceChildren(...facts.map(([k, v]) => {
    const d = node('div');
    d.append(node('dt', '', k), node('dd', '', v));
    return d;
  }));
  $('phone-now').dataset.site = placement ? placement.site : '';
  const newest = crashes[0];
  const why = newest ? (newest.detail || '').replace(/^reported by site \S+: /, '') : '';
  $('phone-crashes').textContent = newest
    ? `Crashes: ${crashes.length} in the audit log; the newest ${dateTime(newest.at_ms)} on ${newest.site}: ${why}`
    : 'Crashes: none in the audit log (sites report each crash there).';
  $('phone-crashes').className = `crash-note${newest ? ' crashed' : ' muted'}`;
  const rows = [
    ...moves.map((m) => ({ at: m.at_ms, m })),
    ...failovers.map((f) => ({ at: f.at_ms, f })),
  ].sort((a, b) => b.at - a.at);
  fillTable($('phone-migrations'), rows.map(({ m, f }) => {
    if (f) {
      const tr = row([
        [dateTime(f.at_ms), 'nowrap'],
        `${f.from || '?'} → ${f.to}`,
        [f.epoch ? String(f.epoch) : '', 'num'],
        ['–', 'num'], ['–', 'num'], ['–', 'num'],
        ['failed over', 'outcome-failover'],
        f.detail || '',
      ]);
      tr.dataset.kind = 'failover';
      return tr;
    }
    const tr = row([
      [dateTime(m.at_ms), 'nowrap'],
      `${m.from} → ${m.to}`,
      [String(m.epoch), 'num'],
      [downtime(m.downtime_us), 'num'],
      [`${m.total_ms.toFixed(0)} ms`, 'num'],
      [bytes(m.bytes), 'num'],
      [m.outcome, `outcome-${m.outcome === 'committed' ? 'committed' : 'aborted'}`],
      m.reason || '',
    ]);
    tr.dataset.id = m.id;
    tr.dataset.kind = 'migration';
    return tr;
  }), 'No migrations or failovers logged for this phone.');
  $('timeline-note').textContent = `${count(moves.length, 'migration')}, ${count(failovers.length, 'failover')}` +
    (moves.length === 200 ? ' (the newest 200 migrations)' : '');
  drawTimeline(placement, moves, failovers, checkpoints, crashes);
  const newestFirst = checkpoints.slice().sort((a, b) => b.at_ms - a.at_ms);
  $('checkpoints-note').textContent = `${checkpoints.length} in the catalogue`;
  fillTable($('phone-checkpoints'), newestFirst.map((c) => row([
    [dateTime(c.at_ms), 'nowrap'],
    c.label || '',
    [c.id.slice(0, 12), 'mono'],
    [bytes(c.stored_bytes), 'num'],
    c.sites.join(', '),
  ])), 'No checkpoints in the catalogue.');
  fillTable($('phone-audit'), audit.slice(0, 50).map((a) => row([
    [dateTime(a.at_ms), 'nowrap'],
    a.principal,
    a.action + (a.detail && a.detail !== 'done' && a.detail !== 'refused' ? ` — ${a.detail}` : ''),
    [String(a.status), 'num'],
  ])), 'Nothing in the audit log names this user.');
}

function median(xs) {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const SITE_COLOURS = ['#2760d0', '#1f9d63', '#c98300', '#7c3aed', '#0e8a9a', '#b8458f', '#64748b', '#8a6d3b'];

/**
 * Where the phone ran over time: a strip of one segment per stay (coloured by site) from the committed migrations
 * and the failovers, aborted migrations as red ticks above it, crashes as red crosses, checkpoints as dots under
 * it. Before the oldest logged change it was on that change's source site (since when, the logs do not say).
 */
function drawTimeline(placement, moves, failovers, checkpoints, crashes) {
  const svg = $('timeline');
  svg.replaceChildren();
  const NS = 'http://www.w3.org/2000/svg';
  const el = (tag, attrs, parent = svg) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    parent.appendChild(e);
    return e;
  };
  const [W, X0, X1] = [1160, 4, 1156];
  const now = Date.now();
  const changes = [
    ...moves.filter((m) => m.outcome === 'committed').map((m) => ({ at: m.at_ms, from: m.from, to: m.to })),
    ...failovers.map((f) => ({ at: f.at_ms, from: f.from, to: f.to, failover: true })),
  ].sort((a, b) => a.at - b.at);
  const times = [...moves.map((m) => m.at_ms), ...failovers.map((f) => f.at_ms), ...checkpoints.map((c) => c.at_ms),
    ...crashes.map((c) => c.at_ms)];
  const first = times.length ? Math.min(...times) : now - 60_000;
  const start = first - Math.max(5_000, (now - first) * 0.08);
  const x = (t) => X0 + ((t - start) / Math.max(1, now - start)) * (X1 - X0);
  const siteIds = [...new Set([...state.sites.map((s) => s.id), ...changes.flatMap((c) => [c.from, c.to])])].sort();
  const colour = (id) => SITE_COLOURS[Math.max(0, siteIds.indexOf(id)) % SITE_COLOURS.length];
  const stays = [];
  let from = start;
  let on = changes.length ? changes[0].from : placement ? placement.site : null;
  for (const c of changes) {
    stays.push({ site: on, from, to: c.at });
    on = c.to;
    from = c.at;
  }
  stays.push({ site: placement ? placement.site : on, from, to: now });
  for (const s of stays) {
    if (!s.site) continue;
    const [a, b] = [x(s.from), x(s.to)];
    const r = el('rect', { x: a, y: 8, width: Math.max(1, b - a - 1), height: 24, rx: 3, fill: colour(s.site) });
    const t = document.createElementNS(NS, 'title');
    t.textContent = `${s.site}: ${dateTime(s.from)} – ${dateTime(s.to)}`;
    r.appendChild(t);
    if (b - a > 60) el('text', { x: a + 6, y: 24, class: 'seg-label' }).textContent = s.site;
  }
  for (const c of changes.filter((c) => c.failover)) {
    el('line', { x1: x(c.at), y1: 2, x2: x(c.at), y2: 38, class: 'failover-mark' });
  }
  for (const m of moves.filter((m) => m.outcome !== 'committed')) {
    el('line', { x1: x(m.at_ms), y1: 2, x2: x(m.at_ms), y2: 38, class: 'abort-mark' });
  }
  for (const c of crashes) {
    const cx = x(c.at_ms);
    const d = `M${cx - 5},15 L${cx + 5},25 M${cx + 5},15 L${cx - 5},25`;
    el('path', { d, class: 'crash-halo' });
    el('path', { d, class: 'crash-mark' });
  }
  for (const c of checkpoints) el('circle', { cx: x(c.at_ms), cy: 41, r: 3, class: 'ckpt-mark' });
  el('text', { x: X0, y: 58, class: 'axis' }).textContent = dateTime(start);
  el('text', { x: X1, y: 58, class: 'axis', 'text-anchor': 'end' }).textContent = `now (${clock(now)})`;
  el('text', { x: W / 2, y: 58, class: 'axis', 'text-anchor': 'middle' }).textContent =
    '● checkpoint   ✕ crash   | aborted move   ¦ failover';
}

// ---- views ----

/** Shows the view the address's fragment names (`#overview`, `#graphs`, `#phone/USER`); never the token. */
function route() {
  if (!storedToken()) return;
  const [view, arg] = location.hash.replace(/^#/, '').split('/');
  const name = ['overview', 'phone', 'graphs'].includes(view) ? view : 'overview';
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${name}`;
  for (const t of document.querySelectorAll('.tab')) t.classList.toggle('active', t.dataset.view === name);
  if (name === 'graphs') charts.resize();
  if (name === 'phone' && arg) loadPhone(decodeURIComponent(arg)).catch((e) => e instanceof Refused && signOut(refusedWords(e)));
}

for (const t of document.querySelectorAll('.tab')) {
  t.addEventListener('click', () => {
    const base = t.dataset.view;
    location.hash = base === 'phone' && state.phoneUser ? `#phone/${encodeURIComponent(state.phoneUser)}` : `#${base}`;
  });
}
window.addEventListener('hashchange', route);
window.addEventListener('resize', () => charts.resize());
setInterval(showStatus, 1000);

/**
 * A tab that kept its token (a reload) asks once whether it still holds before polling: a token the service no
 * longer takes must cost one refusal, not one per poller (five refusals from an address lock it out for a while,
 * every other operator on that address with it).
 */
async function resume() {
  try {
    await get('/v1/tenants');
  } catch (e) {
    if (e instanceof Refused) {
      signOut(refusedWords(e));
      return;
    }
    // Not answering now: the pollers keep trying and say so.
  }
  start();
}

if (storedToken()) resume();
else showLogin('');
