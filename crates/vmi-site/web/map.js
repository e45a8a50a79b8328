// Follow me: the map beside the phone.
//
// Where the sites are (health, phones), where the user is (a marker they can drag),
// which site runs their phone, the round trip to each site, and the phone's migrations.
// Everything comes from the serving site's /v1/demo/* routes, which ask the control
// service; a site without them (or the mock) leaves the panel hidden. Dragging reports
// the position to the control service (on drop, and every 2 s while dragging); the
// placer moves the phone when another site stays closer, and the session's Redirect
// makes the terminal follow.

import { bearer, getJson, reachable } from './api.js';
import { followHint } from './follow-hint.js';
import { PROBE_SETTLE_MS, RoundTrips } from './map-latency.js';
import { MoveLog, countMove } from './map-moves.js';
import { MapPicture, siteState } from './map-picture.js';

export { mapProjection } from './map-picture.js';

const MAP_POLL_MS = 2000; // sites, phone, migrations, latest report
const MAP_RETRY_MS = 10000; // while the routes are missing, or the screen is off
const DRAG_REPORT_MS = 2000;
const REPORT_EVERY_MS = 5000; // keeps the position fresh once this page has set it

const visible = () => document.visibilityState === 'visible';

/** Starts the map (when the page has it and a token); `relayout()` refits the phone beside it. */
export function startMap({ vmi, token, relayout }) {
  const $ = (id) => document.getElementById(id);
  const svg = $('map');
  if (!svg || !token) return;
  const ui = {
    side: $('side'),
    btn: $('map-btn'),
    where: $('fm-where'),
    rtt: $('fm-rtt'),
    hint: $('fm-hint'),
    sites: $('fm-sites').tBodies[0],
    moves: $('fm-moves'),
    empty: $('fm-empty'),
    count: $('fm-count'),
    banner: $('fm-banner'),
  };
  new FollowMe({ vmi, auth: bearer(token), relayout, svg, ui }).start();
}

class FollowMe {
  constructor({ vmi, auth, relayout, svg, ui }) {
    this.vmi = vmi;
    this.auth = auth;
    this.relayout = relayout;
    this.svg = svg;
    this.ui = ui;
    // what the page shows (also read by tests through window.vmi.map)
    this.map = {
      available: false, // the serving site answers /v1/demo/*
      user: null,
      site: null, // the site running the phone
      position: null, // {lat, lon}: where the user is
      sites: [], // [{id, url, lat, lon, phones, healthy, draining, rtt_ms}]
      stale: null, // Date.now() since when the control plane could not be asked (the states shown are older)
      follow: null, // the placer's rules ({min_gain_ms, min_gain_ratio, dwell_ms, report_max_age_ms}), null when off
      closer: null, // {site, since}: a site answering faster by the placer's margin, since when (Date.now())
      migrations: 0, // migrations listed
      reports: 0, // positions this page reported
      lastMove: null, // the newest migration seen arrive while the page was open
    };
    vmi.map = this.map;
    this.sites = [];
    this.owns = false; // the user placed the marker in this page: it reports from now on
    this.dragging = false;
    this.posVersion = 0; // bumps on every change of position
    this.reportedVersion = -1; // the position the control service (and so the proxies) has
    this.lastReportAt = 0; // Date.now() when this page last reported
    this.lastDragReport = 0;
    this.drawQueued = false;
    this.picture = new MapPicture(svg);
    this.trips = new RoundTrips();
    this.moves = new MoveLog(ui, svg, this.map);
  }

  start() {
    setInterval(() => {
      if (this.owns && !this.dragging && visible()) this.report(true);
    }, REPORT_EVERY_MS);
    setInterval(() => this.map.available && visible() && this.queueDraw(), 1000);
    this.bindDrag();
    const btn = this.ui.btn;
    if (btn) {
      btn.addEventListener('click', (ev) => {
        ev.preventDefault();
        btn.blur();
        document.body.classList.toggle('map-open');
        this.relayout();
      });
    }
    this.poll();
    this.probeLoop();
  }

  // ---- drawing ---------------------------------------------------------------------

  draw() {
    const { map, sites, ui } = this;
    if (!map.available || !sites.length) return;
    // The session moved (a Redirect): ask where the phone runs now rather than wait for the next poll.
    const here = this.vmi.state === 'connected' ? sites.find((s) => this.isSessionSite(s)) : null;
    if (here && here.id !== map.site && this.askedAfterMove !== this.vmi.url) {
      this.askedAfterMove = this.vmi.url;
      this.refresh().catch(() => {});
    }
    this.picture.show(sites);
    const rtts = sites.map((s) => this.rttOf(s, false));
    map.sites = sites.map((s, i) => ({
      ...s,
      stale: !!map.stale,
      rtt_ms: rtts[i] === null ? null : Math.round(rtts[i] * 10) / 10,
    }));
    this.picture.draw(map.sites, map.position, rtts, map.site);
    ui.sites.replaceChildren(this.siteTable(rtts));
    ui.where.replaceChildren();
    if (map.site) {
      const b = document.createElement('b');
      b.textContent = map.site;
      ui.where.append(`${map.user}’s phone runs on `, b);
    }
    if (map.stale) {
      const at = new Date(map.stale).toLocaleTimeString([], { hourCycle: 'h23' });
      ui.where.append(` (as of ${at}: the control plane cannot be asked now)`);
    }
    const home = sites.findIndex((s) => s.id === map.site);
    ui.rtt.textContent = home >= 0 && rtts[home] !== null ? rtts[home].toFixed(1) : '–';
    this.hint(rtts);
    this.moves.refreshTimes(Date.now());
  }

  /**
   * The round trip to a site, one figure per site for the whole page: for the site running the phone, the session's
   * own (`vmi.latencyMs`: the connection indicator shows it too), for the others their /healthz probes.
   */
  rttOf(s, freshOnly) {
    if (this.vmi.latencyMs !== null && this.vmi.state === 'connected' && this.isSessionSite(s)) return this.vmi.latencyMs;
    return this.trips.rttOf(s.id, freshOnly);
  }

  /** Whether the session is connected to site `s` (by address: the map's idea of where the phone runs may lag). */
  isSessionSite(s) {
    try {
      return new URL(this.vmi.url.replace(/^ws/i, 'http')).host === new URL(reachable(s.url)).host;
    } catch {
      return false;
    }
  }

  /** The table of sites: name and tags, phones, round trip (the best one marked). */
  siteTable(rtts) {
    const known = rtts.filter((r) => r !== null);
    const best = known.length ? Math.min(...known) : null;
    const body = document.createDocumentFragment();
    this.sites.forEach((s, i) => {
      const state = siteState({ ...s, stale: !!this.map.stale });
      const home = s.id === this.map.site;
      const ms = rtts[i];
      const tr = document.createElement('tr');
      if (home) tr.className = 'home';
      const name = document.createElement('td');
      const dot = document.createElement('span');
      dot.className = `sdot ${state}`;
      name.append(dot, s.id);
      const tag = (text, cls) => {
        const t = document.createElement('span');
        t.className = `tag${cls ? ` ${cls}` : ''}`;
        t.textContent = text;
        name.append(t);
      };
      if (home) tag('your phone');
      if (state === 'draining') tag('draining', 'warn');
      if (state === 'down') tag('down', 'bad');
      if (state === 'unknown') tag('state unknown', 'warn');
      else if (this.trips.silent(s.id) && state !== 'down') tag('no answer', 'bad');
      const count = document.createElement('td');
      count.textContent = String(s.phones);
      const rtt = document.createElement('td');
      rtt.className = `num${ms !== null && ms === best && known.length > 1 ? ' best' : ''}`;
      rtt.textContent = ms === null ? '–' : `${ms.toFixed(1)} ms`;
      tr.append(name, count, rtt);
      body.append(tr);
    });
    return body;
  }

  /** What the placer will do, in its own terms (follow-hint.js), under the map. */
  hint(rtts) {
    const { ui, map } = this;
    const h = followHint({
      sites: this.sites,
      rtts,
      home: map.site,
      rules: map.follow,
      reporting: this.owns,
      closer: map.closer,
      now: Date.now(),
    });
    map.closer = h.closer;
    ui.hint.className = h.best ? 'fm-hint closer' : 'fm-hint';
    if (h.best) {
      const b = document.createElement('b');
      b.textContent = h.best;
      ui.hint.replaceChildren(b, h.text);
    } else {
      ui.hint.textContent = h.text;
    }
  }

  queueDraw() {
    if (this.drawQueued) return;
    this.drawQueued = true;
    setTimeout(() => {
      this.drawQueued = false;
      this.draw();
    }, 16);
  }

  // ---- position --------------------------------------------------------------------

  setPosition(lat, lon) {
    const p = this.map.position;
    if (p && p.lat === lat && p.lon === lon) return;
    this.map.position = { lat, lon };
    this.posVersion++;
    this.queueDraw();
  }

  onReport(r) {
    // Another terminal of this user (or this page, echoed) reported after this page did:
    // that is where the user is now. An older report must not undo a drop.
    if (this.dragging || !r || typeof r.lat !== 'number' || typeof r.lon !== 'number') return;
    if (r.at_ms < this.lastReportAt) return;
    const before = this.posVersion;
    this.setPosition(r.lat, r.lon);
    // the proxies already follow this position
    if (this.posVersion !== before) this.positionLanded(this.posVersion);
  }

  async report(withRtt) {
    const p = this.map.position;
    if (!p) return;
    const body = { lat: Math.round(p.lat * 1e6) / 1e6, lon: Math.round(p.lon * 1e6) / 1e6 };
    if (withRtt && this.reportedVersion === this.posVersion) {
      const rtt = {};
      for (const s of this.sites) {
        const ms = this.rttOf(s, true);
        if (ms !== null) rtt[s.id] = Math.round(ms * 100) / 100;
      }
      if (Object.keys(rtt).length) body.rtt_ms = rtt;
    }
    const version = this.posVersion;
    this.lastReportAt = Date.now();
    try {
      const r = await fetch('/v1/demo/report', {
        method: 'POST',
        headers: { ...this.auth, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (!r.ok) return;
      this.map.reports++;
      if (this.reportedVersion !== version) this.positionLanded(version);
    } catch {
      // the next report tries again
    }
  }

  /** The proxies now delay by the position the control service has. */
  positionLanded(version) {
    this.reportedVersion = version;
    this.trips.settle();
    setTimeout(() => this.probeOnce(), PROBE_SETTLE_MS + 20);
  }

  // ---- polling and probing ---------------------------------------------------------

  async poll() {
    let wait = this.map.available ? MAP_POLL_MS : MAP_RETRY_MS;
    if (visible()) {
      try {
        await this.refresh();
        wait = this.vmi.asleep ? MAP_RETRY_MS : MAP_POLL_MS;
      } catch {
        // no /v1/demo routes here, or the control service is away: try again later
      }
    }
    setTimeout(() => this.poll(), wait);
  }

  /** Asks for the sites, the user's phone, migrations and latest report, and shows them. */
  async refresh() {
    const { map, auth } = this;
    let me;
    let list;
    try {
      [me, list] = await Promise.all([getJson('/v1/demo/me', auth), getJson('/v1/demo/sites', auth)]);
    } catch (e) {
      // The states shown are as old as the last answer: say so, and stop showing them as live.
      if (map.available && !map.stale) map.stale = Date.now();
      if (map.available) this.draw();
      throw e;
    }
    map.stale = null;
    map.user = me.user;
    map.site = me.site;
    map.follow = me.follow || null;
    this.sites = (Array.isArray(list) ? list : [])
      .filter((s) => s && typeof s.id === 'string' && Number.isFinite(s.lat) && Number.isFinite(s.lon))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const [moves, last] = await Promise.allSettled([
      getJson(`/v1/demo/migrations?user=${encodeURIComponent(me.user)}`, auth),
      getJson('/v1/demo/report', auth),
    ]);
    const listed = moves.status === 'fulfilled' && Array.isArray(moves.value) ? moves.value : null;
    if (listed) this.moves.update(listed);
    this.sites = countMove(this.sites, listed ? listed[0] : null);
    if (last.status === 'fulfilled') this.onReport(last.value);
    // Until someone reports, the user stands at the first site (as the delay proxies assume).
    if (!map.position && this.sites.length) this.setPosition(this.sites[0].lat, this.sites[0].lon);
    if (!map.available && this.sites.length) {
      map.available = true;
      this.ui.side.hidden = false;
      this.ui.btn.hidden = false;
      document.body.classList.add('with-map');
      this.relayout();
    }
    this.draw();
  }

  async probeOnce() {
    if (this.trips.probing || !this.map.available || !visible() || this.vmi.asleep) return;
    await this.trips.probe(this.sites);
    this.queueDraw();
  }

  async probeLoop() {
    await this.probeOnce();
    setTimeout(() => this.probeLoop(), MAP_POLL_MS);
  }

  // ---- dragging --------------------------------------------------------------------

  moveTo(ev) {
    const p = this.picture.pointAt(ev);
    if (!p) return;
    this.setPosition(p.lat, p.lon);
    this.draw();
  }

  bindDrag() {
    const svg = this.svg;
    svg.addEventListener('pointerdown', (ev) => {
      if (!this.picture.proj || !ev.isPrimary || (ev.pointerType === 'mouse' && ev.button !== 0)) return;
      ev.preventDefault();
      this.dragging = true;
      this.owns = true;
      this.lastDragReport = performance.now();
      try {
        svg.setPointerCapture(ev.pointerId);
      } catch {
        // synthetic events cannot be captured
      }
      svg.classList.add('dragging');
      this.moveTo(ev);
    });
    svg.addEventListener('pointermove', (ev) => {
      if (!this.dragging) return;
      this.moveTo(ev);
      if (performance.now() - this.lastDragReport >= DRAG_REPORT_MS) {
        this.lastDragReport = performance.now();
        this.report(false);
      }
    });
    const drop = (ev) => {
      if (!this.dragging) return;
      if (ev.type === 'pointerup') this.moveTo(ev);
      this.dragging = false;
      svg.classList.remove('dragging');
      this.report(false);
    };
    svg.addEventListener('pointerup', drop);
    svg.addEventListener('pointercancel', drop);
  }
}
