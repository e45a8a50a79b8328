// The sites on a map drawn in SVG from their coordinates alone (nothing is fetched from a tile server: none is
// reachable from where operators run this): an equirectangular projection of the sites' bounding box, a graticule
// and a scale bar for orientation, each site a circle sized and ringed by its load and coloured by its health, and
// each live migration an arc from its source to its destination that fades after a few seconds.

const SVG_NS = 'http://www.w3.org/2000/svg';
export const MAP_W = 800;
export const MAP_H = 380;
/** Room around the sites, in pixels: labels go to the right of each circle. */
const PAD = { left: 100, right: 210, top: 60, bottom: 60 };
/** How long an arc stays on the map, ms (its fading is the stylesheet's). */
export const ARC_MS = 12000;

/** A site's health as the map and the tables show it: unhealthy (no lease), degraded, draining or healthy. */
export function siteState(s) {
  const leased = s.leased ?? s.healthy;
  if (!leased) return 'unhealthy';
  if (s.degraded) return 'degraded';
  if (s.draining) return 'draining';
  return 'healthy';
}

/** Phones over capacity, 0..1 (more than full counts as full). */
export function loadOf(s) {
  return s.capacity > 0 ? Math.min(1, s.phones / s.capacity) : 0;
}

/** A "nice" step (1, 2 or 5 × 10^n) of at least `min`. */
export function niceStep(min) {
  const p = 10 ** Math.floor(Math.log10(min));
  for (const m of [1, 2, 5, 10]) if (m * p >= min) return m * p;
  return 10 * p;
}

/**
 * An equirectangular projection of the box around `points` ({lat, lon}) into the map's drawing area (a degree of
 * longitude shortened by the cosine of the mean latitude, so distances look right near the sites). At least
 * 0.02° (about 2 km) is shown, so one site or sites in one place still get a sensible scale.
 */
export function projection(points) {
  let [minLat, maxLat, minLon, maxLon] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const p of points) {
    minLat = Math.min(minLat, p.lat);
    maxLat = Math.max(maxLat, p.lat);
    minLon = Math.min(minLon, p.lon);
    maxLon = Math.max(maxLon, p.lon);
  }
  if (!Number.isFinite(minLat)) [minLat, maxLat, minLon, maxLon] = [0, 0, 0, 0];
  const latC = (minLat + maxLat) / 2;
  const lonC = (minLon + maxLon) / 2;
  const k = Math.max(0.05, Math.cos((latC * Math.PI) / 180));
  const w = MAP_W - PAD.left - PAD.right;
  const h = MAP_H - PAD.top - PAD.bottom;
  const spanX = Math.max((maxLon - minLon) * k, 0.02);
  const spanY = Math.max(maxLat - minLat, 0.02);
  const scale = Math.min(w / spanX, h / spanY); // pixels per degree of latitude
  const cx = PAD.left + w / 2;
  const cy = PAD.top + h / 2;
  return {
    x: (lon) => cx + (lon - lonC) * k * scale,
    y: (lat) => cy - (lat - latC) * scale,
    lon: (x) => lonC + (x - cx) / (k * scale),
    lat: (y) => latC - (y - cy) / scale,
    kmPerPx: 111.195 / scale,
  };
}

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, attrs, content) {
  const t = el('text', attrs, parent);
  t.textContent = content;
  return t;
}

const fmtDeg = (v, pos, neg) => `${Math.abs(v).toFixed(v % 1 === 0 ? 0 : 2)}°${v >= 0 ? pos : neg}`;

/** The map in `svg`: [`update`] with the sites, [`migration`] for an arc. */
export class SiteMap {
  constructor(svg) {
    this.svg = svg;
    svg.setAttribute('viewBox', `0 0 ${MAP_W} ${MAP_H}`);
    const defs = el('defs', {}, svg);
    for (const kind of ['committed', 'aborted', 'failover']) {
      const m = el('marker', {
        id: `arrow-${kind}`, viewBox: '0 0 10 10', refX: 8, refY: 5, markerWidth: 5, markerHeight: 5,
        orient: 'auto-start-reverse', markerUnits: 'strokeWidth',
      }, defs);
      el('path', { d: 'M0,0 L10,5 L0,10 z', class: `arrow-${kind}` }, m);
    }
    this.base = el('g', {}, svg);
    this.arcs = el('g', {}, svg);
    this.sites = el('g', {}, svg);
    this.layoutKey = '';
    this.at = new Map(); // site id -> {x, y, r}
  }

  /** Redraws the sites (`/v1/sites` entries); the graticule only when the sites' places changed. */
  update(sites, now = Date.now()) {
    const key = sites.map((s) => `${s.id}@${s.lat},${s.lon}`).sort().join('|');
    if (key !== this.layoutKey) {
      this.layoutKey = key;
      this.proj = projection(sites);
      this.drawBase();
    }
    const proj = this.proj;
    // Sites in the same place are spread on a small circle around it, or one would hide the other.
    const groups = new Map();
    for (const s of sites) {
      const g = `${s.lat.toFixed(4)},${s.lon.toFixed(4)}`;
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(s);
    }
    this.sites.replaceChildren();
    this.at.clear();
    for (const group of groups.values()) {
      group.sort((a, b) => a.id.localeCompare(b.id));
      group.forEach((s, i) => {
        let x = proj.x(s.lon);
        let y = proj.y(s.lat);
        if (group.length > 1) {
          const a = (2 * Math.PI * i) / group.length - Math.PI / 2;
          x += 44 * Math.cos(a);
          y += 44 * Math.sin(a);
        }
        this.drawSite(s, x, y, now);
      });
    }
  }

  drawBase() {
    const proj = this.proj;
    this.base.replaceChildren();
    const grid = el('g', { class: 'graticule' }, this.base);
    const labels = el('g', {}, this.base);
    const [lon0, lon1] = [proj.lon(0), proj.lon(MAP_W)];
    const [lat0, lat1] = [proj.lat(MAP_H), proj.lat(0)];
    const step = niceStep((lat1 - lat0) / 5);
    for (let lat = Math.ceil(lat0 / step) * step; lat <= lat1; lat += step) {
      const y = proj.y(lat);
      el('line', { x1: 0, y1: y, x2: MAP_W, y2: y }, grid);
      text(labels, { x: 4, y: y - 3, class: 'graticule-label' }, fmtDeg(+lat.toFixed(6), 'N', 'S'));
    }
    const stepLon = niceStep((lon1 - lon0) / 7);
    for (let lon = Math.ceil(lon0 / stepLon) * stepLon; lon <= lon1; lon += stepLon) {
      const x = proj.x(lon);
      el('line', { x1: x, y1: 0, x2: x, y2: MAP_H }, grid);
      text(labels, { x: x + 3, y: MAP_H - 4, class: 'graticule-label' }, fmtDeg(+lon.toFixed(6), 'E', 'W'));
    }
    // A scale bar of a round number of kilometres, about 120 px long.
    const km = niceStep(proj.kmPerPx * 100);
    const px = km / proj.kmPerPx;
    const scale = el('g', { class: 'scale', transform: `translate(${MAP_W - px - 16},${MAP_H - 22})` }, this.base);
    el('line', { x1: 0, y1: 0, x2: px, y2: 0 }, scale);
    el('line', { x1: 0, y1: -4, x2: 0, y2: 4 }, scale);
    el('line', { x1: px, y1: -4, x2: px, y2: 4 }, scale);
    text(scale, { x: px / 2, y: -6, 'text-anchor': 'middle' }, `${km} km`);
  }

  drawSite(s, x, y, now) {
    const state = siteState(s);
    const load = loadOf(s);
    const r = 13 + 12 * Math.sqrt(load);
    this.at.set(s.id, { x, y, r: r + 6 });
    const g = el('g', {
      class: `site ${state}`, transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`,
      'data-site': s.id, 'data-state': state, 'data-phones': s.phones, 'data-capacity': s.capacity,
    }, this.sites);
    const title = el('title', {}, g);
    title.textContent = `${s.id}: ${s.phones} of ${s.capacity} phones, ${state}\n${s.url}`;
    const ring = r + 5;
    const c = 2 * Math.PI * ring;
    el('circle', { r: ring, class: 'load-track' }, g);
    if (load > 0) {
      el('circle', {
        r: ring, class: 'load', transform: 'rotate(-90)',
        'stroke-dasharray': `${Math.max(2, load * c).toFixed(1)} ${c.toFixed(1)}`,
      }, g);
    }
    el('circle', { r, class: 'body' }, g);
    text(g, { class: 'count' }, String(s.phones));
    const lx = ring + 8;
    text(g, { x: lx, y: -5, class: 'name' }, s.id);
    // A site without a lease may be gone: its count is what it last said, not what runs there now.
    const detail = state === 'unhealthy'
      ? `${s.phones} / ${s.capacity} phones (last heard)`
      : `${s.phones} / ${s.capacity} phones · ${Math.round(load * 100)} %`;
    text(g, { x: lx, y: 10, class: 'detail' }, detail);
    let word = '';
    if (state === 'unhealthy') {
      word = s.last_heartbeat_ms ? `unhealthy · silent ${ago(now - s.last_heartbeat_ms)}` : 'unhealthy · never heard';
    } else if (state === 'degraded') {
      word = `degraded: ${s.degraded}`;
    } else if (state === 'draining') {
      word = 'draining';
    }
    if (word) text(g, { x: lx, y: 25, class: `state-word ${state}` }, word.length > 34 ? `${word.slice(0, 33)}…` : word);
  }

  /**
   * Draws a migration (`/v1/migrations` entry) as an arc from its source to its destination, labelled with the
   * user and the downtime; it fades and is removed after [`ARC_MS`]. False if a site is not on the map.
   */
  migration(m) {
    const kind = m.outcome === 'committed' ? 'committed' : 'aborted';
    const label = kind === 'committed' ? `${m.user} · ${(m.downtime_us / 1000).toFixed(1)} ms` : `${m.user} · aborted`;
    return this.arc({ id: `m${m.id}`, from: m.from, to: m.to, kind, label });
  }

  /** Draws a failover of `user` from site `from` to site `to` (an audit entry's `id`) like a migration. */
  failover(id, user, from, to) {
    return this.arc({ id: `f${id}`, from, to, kind: 'failover', label: `${user} · failed over` });
  }

  arc({ id, from, to, kind, label }) {
    const a = this.at.get(from);
    const b = this.at.get(to);
    if (!a || !b || from === to) return false;
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const d = Math.hypot(dx, dy) || 1;
    const [ux, uy] = [dx / d, dy / d];
    // From the edge of one circle to the edge of the other, bowed to one side so A→B and B→A do not overlap.
    const p0 = { x: a.x + ux * a.r, y: a.y + uy * a.r };
    const p2 = { x: b.x - ux * (b.r + 4), y: b.y - uy * (b.r + 4) };
    const bow = Math.min(80, 0.25 * d);
    const p1 = { x: (a.x + b.x) / 2 - uy * bow, y: (a.y + b.y) / 2 + ux * bow };
    const g = el('g', { class: `arc ${kind}`, 'data-arc': id }, this.arcs);
    el('path', {
      d: `M${p0.x.toFixed(1)},${p0.y.toFixed(1)} Q${p1.x.toFixed(1)},${p1.y.toFixed(1)} ${p2.x.toFixed(1)},${p2.y.toFixed(1)}`,
      'marker-end': `url(#arrow-${kind})`,
    }, g);
    // The label beside the arc's middle, on the outer side of its bow, so the line does not cross it.
    const mid = { x: 0.25 * p0.x + 0.5 * p1.x + 0.25 * p2.x, y: 0.25 * p0.y + 0.5 * p1.y + 0.25 * p2.y };
    const [nx, ny] = [-uy, ux];
    const anchor = nx > 0.3 ? 'start' : nx < -0.3 ? 'end' : 'middle';
    text(g, { x: (mid.x + nx * 10).toFixed(1), y: (mid.y + ny * 10 + 4 + (ny > 0 ? 6 : 0)).toFixed(1), 'text-anchor': anchor }, label);
    setTimeout(() => g.remove(), ARC_MS);
    return true;
  }
}

/** A duration in words: "850 ms", "12 s", "4 min", "3 h". */
export function ago(ms) {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 90_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 90 * 60_000) return `${Math.round(ms / 60_000)} min`;
  return `${Math.round(ms / 3_600_000)} h`;
}
