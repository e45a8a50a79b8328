// The follow-me map's picture (SVG): the sites with their areas, names and phone counts,
// the user's marker ("YOU"), a line from the user to each site labelled with its round
// trip, a graticule and a scale bar. Static layers are built once per set of sites.

/** The picture's size in SVG units. */
export const MAP_W = 400;
export const MAP_H = 300;
const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * An equirectangular projection of the box around `points` ({lat, lon}) onto a w×h
 * picture, with `margin` of the box's span on every side. Returns {x(lon), y(lat),
 * lon(x), lat(y), kmPerPx, scale, k}. Pure (used by the map, testable under node).
 */
export function mapProjection(points, w = MAP_W, h = MAP_H, margin = 0.3) {
  let minLat = Infinity;
  let maxLat = -Infinity;
  let minLon = Infinity;
  let maxLon = -Infinity;
  for (const p of points) {
    minLat = Math.min(minLat, p.lat);
    maxLat = Math.max(maxLat, p.lat);
    minLon = Math.min(minLon, p.lon);
    maxLon = Math.max(maxLon, p.lon);
  }
  if (!Number.isFinite(minLat)) minLat = maxLat = minLon = maxLon = 0;
  const latC = (minLat + maxLat) / 2;
  const lonC = (minLon + maxLon) / 2;
  const k = Math.max(0.05, Math.cos((latC * Math.PI) / 180)); // a degree of longitude, in degrees of latitude
  const spanX = Math.max((maxLon - minLon) * k, 0.02) * (1 + 2 * margin);
  const spanY = Math.max(maxLat - minLat, 0.02) * (1 + 2 * margin);
  const scale = Math.min(w / spanX, h / spanY); // pixels per degree of latitude
  return {
    x: (lon) => w / 2 + (lon - lonC) * k * scale,
    y: (lat) => h / 2 - (lat - latC) * scale,
    lon: (x) => lonC + (x - w / 2) / (k * scale),
    lat: (y) => latC - (y - h / 2) / scale,
    kmPerPx: 111.195 / scale,
    scale,
    k,
  };
}

/** A "nice" step (1, 2 or 5 × 10^n) of at least `min`. */
export function niceStep(min) {
  const p = 10 ** Math.floor(Math.log10(min));
  for (const m of [1, 2, 5, 10]) if (m * p >= min) return m * p;
  return 10 * p;
}

/** A site's state as the map shows it: 'ok', 'draining' or 'down'. */
export function siteState(s) {
  if (s.stale) return 'unknown';
  return !s.healthy ? 'down' : s.draining ? 'draining' : 'ok';
}

function svgEl(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

export class MapPicture {
  constructor(svg) {
    this.svg = svg;
    this.proj = null; // null until there are sites
    this.projKey = '';
    this.layers = {};
    this.marks = new Map(); // site id -> {g, area, name, meta, link, label, box, text}
    this.you = null;
  }

  /** Fits the picture to `sites` (rebuilt only when they or their places change). */
  show(sites) {
    const key = sites.map((s) => `${s.id}@${s.lat},${s.lon}`).join('|');
    if (key === this.projKey) return;
    this.projKey = key;
    this.proj = mapProjection(sites);
    this.build(sites);
  }

  /** The place ({lat, lon}) under a pointer event, kept inside the picture; null before there is one. */
  pointAt(ev) {
    const m = this.svg.getScreenCTM();
    const proj = this.proj;
    if (!m || !proj) return null;
    const p = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(m.inverse());
    const x = Math.min(MAP_W - 8, Math.max(8, p.x));
    const y = Math.min(MAP_H - 8, Math.max(8, p.y));
    return { lat: proj.lat(y), lon: proj.lon(x) };
  }

  // ---- static layers ---------------------------------------------------------------

  build(sites) {
    const svg = this.svg;
    svg.replaceChildren();
    this.marks.clear();
    this.background();
    this.graticule();
    this.scaleBar();
    const layers = this.layers;
    layers.areas = svgEl('g', {}, svg);
    layers.links = svgEl('g', {}, svg);
    layers.sites = svgEl('g', {}, svg);
    layers.labels = svgEl('g', {}, svg);
    layers.you = svgEl('g', {}, svg);
    for (const s of sites) this.marks.set(s.id, this.siteMark(s));
    const you = svgEl('g', { class: 'you' }, layers.you);
    svgEl('circle', { class: 'halo', r: 16 }, you);
    svgEl('circle', { class: 'pin', r: 7.5 }, you);
    svgEl('text', { y: -14, 'text-anchor': 'middle' }, you).textContent = 'YOU';
    this.you = you;
  }

  background() {
    const svg = this.svg;
    const defs = svgEl('defs', {}, svg);
    const bg = svgEl('radialGradient', { id: 'fm-bg', cx: '50%', cy: '45%', r: '75%' }, defs);
    svgEl('stop', { offset: '0%', 'stop-color': '#141b29' }, bg);
    svgEl('stop', { offset: '100%', 'stop-color': '#0a0d13' }, bg);
    for (const [state, color] of [['ok', '#3ecf8e'], ['draining', '#f5b84a'], ['down', '#ff6b6b']]) {
      const area = svgEl('radialGradient', { id: `fm-area-${state}` }, defs);
      svgEl('stop', { offset: '0%', 'stop-color': color, 'stop-opacity': '0.16' }, area);
      svgEl('stop', { offset: '100%', 'stop-color': color, 'stop-opacity': '0' }, area);
    }
    const dots = svgEl('pattern', { id: 'fm-dots', width: 12, height: 12, patternUnits: 'userSpaceOnUse' }, defs);
    svgEl('circle', { cx: 6, cy: 6, r: 0.8, fill: 'rgba(150,170,210,0.10)' }, dots);
    svgEl('rect', { width: MAP_W, height: MAP_H, fill: 'url(#fm-bg)' }, svg);
    svgEl('rect', { width: MAP_W, height: MAP_H, fill: 'url(#fm-dots)' }, svg);
  }

  /** The graticule, labelled at the edges. */
  graticule() {
    const proj = this.proj;
    const grid = svgEl('g', { class: 'grid' }, this.svg);
    const latStep = niceStep(55 / proj.scale);
    const lonStep = niceStep(55 / (proj.scale * proj.k));
    for (let lat = Math.ceil(proj.lat(MAP_H) / latStep) * latStep; lat < proj.lat(0); lat += latStep) {
      const y = proj.y(lat);
      svgEl('line', { x1: 0, x2: MAP_W, y1: y, y2: y }, grid);
      svgEl('text', { x: 4, y: y - 3 }, grid).textContent = `${lat.toFixed(latStep < 0.1 ? 2 : 1)}°N`;
    }
    for (let lon = Math.ceil(proj.lon(0) / lonStep) * lonStep; lon < proj.lon(MAP_W); lon += lonStep) {
      const x = proj.x(lon);
      svgEl('line', { x1: x, x2: x, y1: 0, y2: MAP_H }, grid);
      svgEl('text', { x: x + 3, y: MAP_H - 5 }, grid).textContent = `${lon.toFixed(lonStep < 0.1 ? 2 : 1)}°E`;
    }
  }

  /** The scale bar, bottom right. */
  scaleBar() {
    const proj = this.proj;
    const km = niceStep(70 * proj.kmPerPx);
    const len = km / proj.kmPerPx;
    const scale = svgEl('g', { class: 'scale' }, this.svg);
    const x1 = MAP_W - 14 - len;
    const y = MAP_H - 16;
    svgEl('line', { x1, x2: MAP_W - 14, y1: y, y2: y }, scale);
    svgEl('line', { x1, x2: x1, y1: y - 4, y2: y + 1 }, scale);
    svgEl('line', { x1: MAP_W - 14, x2: MAP_W - 14, y1: y - 4, y2: y + 1 }, scale);
    svgEl('text', { x: MAP_W - 14 - len / 2, y: y - 6, 'text-anchor': 'middle' }, scale).textContent = `${km} km`;
  }

  /** A site's marker, area, name, line to the user and round-trip label. */
  siteMark(s) {
    const layers = this.layers;
    const x = this.proj.x(s.lon);
    const yy = this.proj.y(s.lat);
    const g = svgEl('g', { class: 'site' }, layers.sites);
    const area = svgEl('circle', { cx: x, cy: yy, r: 46, fill: 'url(#fm-area-ok)' }, layers.areas);
    svgEl('circle', { class: 'pulse', cx: x, cy: yy, r: 11 }, g);
    svgEl('circle', { class: 'ring', cx: x, cy: yy, r: 13 }, g);
    svgEl('circle', { class: 'pin', cx: x, cy: yy, r: 7.5 }, g);
    const badge = svgEl('g', { class: 'badge', transform: `translate(${x + 10} ${yy - 11})` }, g);
    svgEl('circle', { r: 7.5 }, badge);
    svgEl('rect', { x: -2.6, y: -4.2, width: 5.2, height: 8.4, rx: 1.3 }, badge);
    const name = svgEl('text', { class: 'site-name' }, g);
    name.textContent = s.id;
    const meta = svgEl('text', { class: 'site-meta' }, g);
    const link = svgEl('line', { class: 'link', x2: x, y2: yy }, layers.links);
    const label = svgEl('g', { class: 'link-label' }, layers.labels);
    const box = svgEl('rect', { rx: 6, height: 15 }, label);
    const text = svgEl('text', { 'text-anchor': 'middle' }, label);
    return { g, area, name, meta, link, label, box, text };
  }

  // ---- drawing ---------------------------------------------------------------------

  /**
   * Draws the user at `pos` ({lat, lon} or null) and each site of `sites` (as given to
   * `show`) with its round trip `rtts[i]` (ms or null); `home` is the site running the phone.
   */
  draw(sites, pos, rtts, home) {
    const proj = this.proj;
    const ux = pos ? Math.min(MAP_W - 8, Math.max(8, proj.x(pos.lon))) : -100;
    const uy = pos ? Math.min(MAP_H - 8, Math.max(8, proj.y(pos.lat))) : -100;
    const you = this.you;
    you.setAttribute('transform', `translate(${ux} ${uy})`);
    you.style.display = pos ? '' : 'none';
    // on top of a site, the site's own label says where: no "YOU" over it
    const onSite = sites.some((s) => Math.hypot(proj.x(s.lon) - ux, proj.y(s.lat) - uy) < 36);
    you.lastChild.style.display = onSite ? 'none' : '';
    sites.forEach((s, i) => this.drawSite(s, s.id === home, !!pos, rtts[i], ux, uy));
  }

  drawSite(s, home, placed, ms, ux, uy) {
    const m = this.marks.get(s.id);
    const state = siteState(s);
    const sx = this.proj.x(s.lon);
    const sy = this.proj.y(s.lat);
    m.g.setAttribute('class', `site ${state}${home ? ' home' : ''}`);
    m.area.setAttribute('fill', `url(#fm-area-${state})`);
    const phones = `${s.phones} phone${s.phones === 1 ? '' : 's'}`;
    const word = { down: 'down', draining: 'draining', unknown: 'state unknown' }[state];
    m.meta.textContent = state === 'ok' ? phones : `${phones} · ${word}`;
    placeLabel(m, sx, sy, ux, uy);
    m.link.setAttribute('x1', ux);
    m.link.setAttribute('y1', uy);
    m.link.setAttribute('class', home ? 'link active' : 'link');
    m.link.style.display = placed ? '' : 'none';
    // a label on a short line would sit on the markers
    m.label.style.display = placed && ms !== null && Math.hypot(sx - ux, sy - uy) > 60 ? '' : 'none';
    m.label.setAttribute('class', home ? 'link-label active' : 'link-label');
    if (placed && ms !== null) {
      const lx = ux + (sx - ux) * 0.5;
      const ly = uy + (sy - uy) * 0.5;
      m.text.textContent = `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
      const w = m.text.textContent.length * 5.6 + 10;
      m.box.setAttribute('x', lx - w / 2);
      m.box.setAttribute('y', ly - 8);
      m.box.setAttribute('width', w);
      m.text.setAttribute('x', lx);
      m.text.setAttribute('y', ly + 3.5);
    }
  }
}

/** Puts a site's two label lines beside it where they fit and do not cover the user. */
function placeLabel(m, sx, sy, ux, uy) {
  const w = Math.max(m.name.textContent.length, m.meta.textContent.length) * 6.2 + 4;
  const options = [
    [sx + 21, sy + 1, 'start', sx + 21],
    [sx - 16, sy + 1, 'end', sx - 16 - w],
    [sx, sy + 26, 'middle', sx - w / 2],
    [sx, sy - 30, 'middle', sx - w / 2],
  ].map(([x, y, anchor, left]) => ({ x, y, anchor, left, top: y - 11 }));
  const fits = (o) => o.left >= 2 && o.left + w <= MAP_W - 2 && o.top >= 2 && o.top + 26 <= MAP_H - 18;
  const clear = (o) => !(ux > o.left - 14 && ux < o.left + w + 14 && uy > o.top - 14 && uy < o.top + 40);
  const o = options.find((c) => fits(c) && clear(c)) || options.find(fits) || options[0];
  for (const [el, dy] of [[m.name, 0], [m.meta, 13]]) {
    el.setAttribute('x', o.x);
    el.setAttribute('y', o.y + dy);
    el.setAttribute('text-anchor', o.anchor);
  }
}
