// The follow-me map's migrations: the log of the phone's moves (newest first, at most
// 20), and a banner when a move arrives while the page is open.

import { formatAgo, formatBytes, formatMicros } from './format.js';

const MOVES_KEPT = 20;
const BANNER_MS = 8000;
const MOVED_MS = 1500;

/**
 * Sites count phones in their heartbeats (every few seconds): until both ends of the
 * newest migration `m` have sent one since, count the phone where it went. Returns the
 * sites as they should be shown. Pure.
 */
export function countMove(sites, m) {
  if (!m || m.outcome !== 'committed') return sites;
  return sites.map((s) => {
    if (!(s.last_heartbeat_ms < m.at_ms)) return s;
    if (s.id === m.from) return { ...s, phones: Math.max(0, s.phones - 1) };
    if (s.id === m.to) return { ...s, phones: s.phones + 1 };
    return s;
  });
}

function bold(text) {
  const el = document.createElement('b');
  el.textContent = text;
  return el;
}

function moveRow(m, fresh) {
  const li = document.createElement('li');
  li.className = `fm-move${m.outcome === 'committed' ? '' : ' aborted'}${fresh ? ' new' : ''}`;
  li.dataset.at = String(m.at_ms);
  const route = document.createElement('div');
  route.className = 'fm-route';
  const arrow = document.createElement('span');
  arrow.className = 'arrow';
  arrow.textContent = '→';
  route.append(m.from, arrow, m.to);
  if (m.outcome !== 'committed') route.append(` (${m.outcome})`);
  const when = document.createElement('div');
  when.className = 'fm-when';
  when.textContent = formatAgo(m.at_ms, Date.now());
  const figs = document.createElement('div');
  figs.className = 'fm-figs';
  const fig = (value, label) => {
    const span = document.createElement('span');
    span.append(bold(value), ` ${label}`);
    figs.append(span);
  };
  fig(formatMicros(m.downtime_us), 'downtime');
  fig(`${Math.round(m.total_ms)} ms`, 'in all');
  fig(formatBytes(m.bytes), 'sent');
  li.append(route, when, figs);
  if (m.reason && m.outcome !== 'committed') li.title = m.reason;
  return li;
}

export class MoveLog {
  /** `ui` holds moves, empty, count, banner and hint; `map` is what the page shows (`vmi.map`). */
  constructor(ui, svg, map) {
    this.ui = ui;
    this.svg = svg;
    this.map = map;
    this.seen = null; // migration ids already listed (null before the first answer)
    this.rows = new Map(); // migration id -> <li>
    this.bannerTimer = 0;
    this.movedTimer = 0;
  }

  /** The user's migrations as the control service lists them (newest first). */
  update(list) {
    const { ui, map, rows } = this;
    list = list.filter((m) => m && typeof m.id === 'number');
    const fresh = this.seen === null ? [] : list.filter((m) => !this.seen.has(m.id));
    this.seen = new Set(list.map((m) => m.id));
    // the log only grows: new entries go on top, newest first
    for (const m of list.filter((x) => !rows.has(x.id)).reverse()) {
      const li = moveRow(m, fresh.includes(m));
      rows.set(m.id, li);
      ui.moves.prepend(li);
    }
    while (rows.size > MOVES_KEPT) {
      const oldest = Math.min(...rows.keys());
      rows.get(oldest).remove();
      rows.delete(oldest);
    }
    map.migrations = list.length;
    ui.empty.hidden = list.length > 0;
    ui.count.textContent = list.length ? `${list.length} for ${map.user}` : '';
    if (fresh.length) this.announce(fresh[0]);
  }

  /** Refreshes each entry's "… ago". */
  refreshTimes(now) {
    for (const li of this.rows.values()) li.querySelector('.fm-when').textContent = formatAgo(Number(li.dataset.at), now);
  }

  announce(m) {
    const { ui } = this;
    this.map.lastMove = m;
    const ok = m.outcome === 'committed';
    ui.banner.className = `fm-banner${ok ? '' : ' aborted'}`;
    if (ok) {
      ui.banner.replaceChildren(
        'Your phone moved ',
        bold(`${m.from} → ${m.to}`),
        ` · ${formatMicros(m.downtime_us)} downtime, ${Math.round(m.total_ms)} ms in all`,
      );
    } else {
      ui.banner.replaceChildren('A move to ', bold(m.to), ` was aborted${m.reason ? `: ${m.reason}` : ''}`);
    }
    ui.banner.hidden = false;
    ui.hint.hidden = true;
    clearTimeout(this.bannerTimer);
    this.bannerTimer = setTimeout(() => {
      ui.banner.hidden = true;
      ui.hint.hidden = false;
    }, BANNER_MS);
    this.svg.classList.add('moved');
    clearTimeout(this.movedTimer);
    this.movedTimer = setTimeout(() => this.svg.classList.remove('moved'), MOVED_MS);
    for (const li of this.rows.values()) {
      if (li.classList.contains('new') && Number(li.dataset.at) !== m.at_ms) li.classList.remove('new');
    }
  }
}
