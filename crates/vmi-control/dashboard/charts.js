// The graphs of the key figures, drawn with uPlot (vendored: uPlot.iife.min.js defines the global `uPlot`) from the
// series metrics.js keeps. Charts are made the first time their view is shown (uPlot measures its box) and fed the
// whole series after every scrape.

const PALETTE = ['#2760d0', '#1f9d63', '#c98300', '#7c3aed', '#d14343', '#0e8a9a', '#64748b', '#b8458f'];
const HEIGHT = 190;

const pad = (n) => String(n).padStart(2, '0');
/** Seconds since the epoch as the local time of day, 24-hour: the page's one way of writing a time. */
function clock(t) {
  const d = new Date(t * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

const fixed = (digits, unit = '') => (_u, v) => (v === null || v === undefined ? '–' : `${v.toFixed(digits)}${unit}`);

/** One graph: its title, what it shows, and how to take its lines out of the series. */
const GRAPHS = [
  {
    id: 'phones',
    title: 'Phones running',
    sub: 'as the sites’ heartbeats say; sites without a lease left out',
    lines: (s) => [
      { label: 'all sites', data: s.phones, width: 2.5, stepped: true },
      ...Object.entries(s.sites).map(([id, data]) => ({ label: id, data, width: 1.2, stepped: true })),
    ],
    value: fixed(0),
  },
  {
    id: 'migrations',
    title: 'Migrations and failovers per minute',
    sub: 'in the trailing minute',
    lines: (s) => [
      { label: 'committed', data: s.perMinute.committed, color: '#7c3aed', width: 2 },
      { label: 'aborted', data: s.perMinute.aborted, color: '#d14343', width: 1.5 },
      { label: 'failed over', data: s.perMinute.failovers, color: '#c98300', width: 1.5 },
    ],
    value: fixed(0),
  },
  {
    id: 'downtime',
    title: 'Migration downtime, ms',
    sub: 'p50, p99 (histogram buckets) and mean, trailing minute',
    lines: (s) => [
      { label: 'p50', data: s.downtime.p50, color: '#2760d0', width: 2 },
      { label: 'p99', data: s.downtime.p99, color: '#d14343', width: 1.5 },
      { label: 'mean', data: s.downtime.mean, color: '#64748b', width: 1.2, dash: [4, 3] },
    ],
    value: fixed(2, ' ms'),
  },
  {
    id: 'heartbeats',
    title: 'Heartbeats per second',
    sub: 'site heartbeats the control service answered',
    lines: (s) => [{ label: 'heartbeats/s', data: s.heartbeats, color: '#1f9d63', width: 2 }],
    value: fixed(2),
  },
  {
    id: 'http',
    title: 'HTTP requests per second',
    sub: 'by status class, every route (this page’s polling included)',
    lines: (s) => [
      { label: '2xx', data: s.http['2xx'], color: '#1f9d63', width: 2 },
      { label: '3xx', data: s.http['3xx'], color: '#64748b', width: 1.2 },
      { label: '4xx', data: s.http['4xx'], color: '#c98300', width: 1.5 },
      { label: '5xx', data: s.http['5xx'], color: '#d14343', width: 1.5 },
    ],
    value: fixed(2),
  },
  {
    id: 'process',
    title: 'Control service process',
    sub: 'CPU in cores (left) and resident memory in MiB (right)',
    lines: (s) => [
      { label: 'CPU, cores', data: s.cpu, color: '#2760d0', width: 2, scale: 'y' },
      { label: 'memory, MiB', data: s.rssMiB, color: '#b8458f', width: 2, scale: 'mem' },
    ],
    value: fixed(2),
    memAxis: true,
  },
];

/** The charts in `box`: [`draw`] with a `Scrapes.series()`; [`resize`] after the view shows. */
export class Charts {
  constructor(box) {
    this.box = box;
    this.plots = new Map(); // id -> {plot, labels, holder}
    this.last = null;
  }

  /** Draws `series` (kept to draw again once the view is visible, if it is not now). */
  draw(series) {
    this.last = series;
    if (this.box.offsetParent === null) return; // hidden: uPlot would measure 0 px
    for (const g of GRAPHS) {
      const lines = g.lines(series);
      const labels = lines.map((l) => l.label).join('|');
      let entry = this.plots.get(g.id);
      if (entry && entry.labels !== labels) {
        // A site appeared or left: a chart's series are fixed at creation, so it is made again.
        entry.plot.destroy();
        entry.holder.replaceChildren();
        entry = null;
      }
      if (!entry) entry = this.make(g, lines, labels);
      entry.plot.setData([series.t, ...lines.map((l) => l.data)]);
      // The legend says the newest values unless the pointer is on the chart.
      if (series.t.length && entry.plot.cursor.left < 0) entry.plot.setLegend({ idx: series.t.length - 1 });
    }
  }

  make(g, lines, labels) {
    let card = this.box.querySelector(`[data-graph="${g.id}"]`);
    if (!card) {
      card = document.createElement('div');
      card.className = 'card graph';
      card.dataset.graph = g.id;
      const h = document.createElement('h3');
      h.textContent = g.title;
      const sub = document.createElement('div');
      sub.className = 'sub';
      sub.textContent = g.sub;
      const holder = document.createElement('div');
      holder.className = 'plot';
      card.append(h, sub, holder);
      this.box.appendChild(card);
    }
    const holder = card.querySelector('.plot');
    const width = Math.max(240, holder.clientWidth);
    const axisStyle = { stroke: '#5f6b7d', grid: { stroke: '#edf0f4', width: 1 }, ticks: { stroke: '#dde2ea', width: 1 } };
    const axes = [
      { ...axisStyle, space: 70, values: (_u, ticks) => ticks.map(clock) },
      { ...axisStyle, size: 48, values: (_u, ticks) => ticks.map(shortNumber) },
    ];
    if (g.memAxis) axes.push({ ...axisStyle, scale: 'mem', side: 1, grid: { show: false }, size: 48, values: (_u, ticks) => ticks.map(shortNumber) });
    const opts = {
      width,
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        x: { time: true },
        y: { range: (_u, min, max) => niceRange(min, max) },
        ...(g.memAxis ? { mem: { range: (_u, min, max) => niceRange(min, max) } } : {}),
      },
      axes,
      series: [
        { value: (_u, t) => (t === null || t === undefined ? '–' : clock(t)) },
        ...lines.map((l, i) => ({
          label: l.label,
          stroke: l.color || PALETTE[i % PALETTE.length],
          width: l.width || 1.5,
          dash: l.dash,
          scale: l.scale || 'y',
          spanGaps: false,
          points: { show: false },
          value: g.value,
          // A gauge holds its value until the next scrape: steps, not slopes between scrapes.
          ...(l.stepped ? { paths: uPlot.paths.stepped({ align: 1 }) } : {}),
        })),
      ],
    };
    const plot = new uPlot(opts, [[], ...lines.map(() => [])], holder);
    const entry = { plot, labels, holder };
    this.plots.set(g.id, entry);
    return entry;
  }

  /** Removes the charts and what they drew (a sign-out). */
  clear() {
    for (const { plot } of this.plots.values()) plot.destroy();
    this.plots.clear();
    this.box.replaceChildren();
    this.last = null;
  }

  /** Fits the charts to their boxes (the view was shown, or the window resized), and draws what is kept. */
  resize() {
    if (this.box.offsetParent === null) return;
    for (const { plot, holder } of this.plots.values()) {
      plot.setSize({ width: Math.max(240, holder.clientWidth), height: HEIGHT });
    }
    if (this.last) this.draw(this.last);
  }
}

/** The y range from 0 (every figure here is a count, a rate or a size) to a little above the largest value. */
function niceRange(min, max) {
  if (min === null || max === null || !Number.isFinite(max)) return [0, 1];
  const top = max <= 0 ? 1 : max * 1.15;
  return [Math.min(0, min), top];
}

/** 1234 as "1.2k", 0.5 as "0.5". */
function shortNumber(v) {
  if (v === null || v === undefined) return '';
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  if (a === 0) return '0';
  if (a < 0.01) return v.toExponential(0);
  return `${+v.toFixed(2)}`;
}
