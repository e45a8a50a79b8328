// The control service's /metrics (OpenMetrics text) read in the page: a parser, the figures the graphs draw taken
// out of one scrape, and the series over time (rates between scrapes, downtime quantiles from the histogram's
// buckets). Pure functions, no DOM: tests/browser/dashboard.mjs runs them under node too.

/** Keeps at most this long of scrapes, in seconds. */
export const KEEP_S = 3600;

/** The window the per-minute figures and the downtime quantiles are taken over, in seconds. */
export const WINDOW_S = 60;

/** One label value: the text between quotes, with OpenMetrics' escapes (\\, \", \n) undone. */
function labelsOf(text) {
  const labels = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('=', i);
    if (eq < 0) break;
    const name = text.slice(i, eq).replace(/^[\s,]+/, '').trim();
    let j = eq + 1;
    if (text[j] !== '"') break;
    j++;
    let value = '';
    while (j < text.length && text[j] !== '"') {
      if (text[j] === '\\' && j + 1 < text.length) {
        const c = text[j + 1];
        value += c === 'n' ? '\n' : c;
        j += 2;
      } else {
        value += text[j++];
      }
    }
    labels[name] = value;
    i = j + 1;
  }
  return labels;
}

/**
 * Parses OpenMetrics/Prometheus text: a Map from sample name (e.g. `vmi_control_migrations_total`) to a list of
 * `{labels, value}`. Comment lines (`# TYPE`, `# HELP`, `# EOF`) and unparsable lines are skipped.
 */
export function parseMetrics(text) {
  const out = new Map();
  for (const raw of String(text).split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    let name;
    let labels = {};
    let rest;
    const brace = line.indexOf('{');
    const space = line.indexOf(' ');
    if (brace >= 0 && (space < 0 || brace < space)) {
      // The closing brace is the last `}` before the value (label values may hold spaces, not unescaped braces).
      const close = line.lastIndexOf('}');
      if (close < brace) continue;
      name = line.slice(0, brace);
      labels = labelsOf(line.slice(brace + 1, close));
      rest = line.slice(close + 1).trim();
    } else {
      if (space < 0) continue;
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const valueText = rest.split(/\s+/)[0];
    const value = valueText === '+Inf' ? Infinity : valueText === '-Inf' ? -Infinity : Number(valueText);
    if (Number.isNaN(value) && valueText !== 'NaN') continue;
    if (!out.has(name)) out.set(name, []);
    out.get(name).push({ labels, value });
  }
  return out;
}

/** The sum of the samples of `name` whose labels include `match`, or null if there is none. */
export function total(families, name, match = {}) {
  const samples = families.get(name);
  if (!samples) return null;
  let sum = 0;
  let any = false;
  for (const s of samples) {
    if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) {
      sum += s.value;
      any = true;
    }
  }
  return any ? sum : null;
}

/**
 * One scrape reduced to what the graphs draw, stamped `t` (seconds since the Unix epoch). Sites in `silent` (no
 * lease now) are left out of the phones: their gauge holds what they said last, and those phones may be running
 * elsewhere after a failover, counted there too.
 */
export function figuresOf(families, t, silent = new Set()) {
  const sitePhones = {};
  for (const s of families.get('vmi_control_site_phones') || []) {
    if (!silent.has(s.labels.site)) sitePhones[s.labels.site] = s.value;
  }
  const http = { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
  for (const s of families.get('vmi_http_requests_total') || []) {
    const cls = `${String(s.labels.status || '')[0] || '?'}xx`;
    if (cls in http) http[cls] += s.value;
  }
  const buckets = (families.get('vmi_control_migration_downtime_seconds_bucket') || [])
    .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), count: s.value }))
    .filter((b) => !Number.isNaN(b.le))
    .sort((a, b) => a.le - b.le);
  return {
    t,
    sitePhones,
    phones: Object.values(sitePhones).reduce((a, b) => a + b, 0),
    committed: total(families, 'vmi_control_migrations_total', { outcome: 'committed' }) ?? 0,
    aborted: total(families, 'vmi_control_migrations_total', { outcome: 'aborted' }) ?? 0,
    failovers: total(families, 'vmi_control_failovers_total') ?? 0,
    heartbeats: total(families, 'vmi_control_heartbeats_total') ?? 0,
    admitted: total(families, 'vmi_control_admissions_total', { outcome: 'admitted' }) ?? 0,
    refused: total(families, 'vmi_control_admissions_total', { outcome: 'refused' }) ?? 0,
    http,
    cpu: total(families, 'process_cpu_seconds_total'),
    rss: total(families, 'process_resident_memory_bytes'),
    downtime: {
      buckets,
      sum: total(families, 'vmi_control_migration_downtime_seconds_sum') ?? 0,
      count: total(families, 'vmi_control_migration_downtime_seconds_count') ?? 0,
    },
  };
}

/**
 * The `q` quantile (0..1) of the observations a cumulative histogram gained between two scrapes (`before` and
 * `after`: sorted `{le, count}` lists), interpolated linearly inside the bucket it falls in as Prometheus'
 * histogram_quantile does; null if nothing was observed in between.
 */
export function quantileBetween(before, after, q) {
  const prior = new Map((before || []).map((b) => [b.le, b.count]));
  const gained = after.map((b) => ({ le: b.le, count: b.count - (prior.get(b.le) ?? 0) }));
  const n = gained.length ? gained[gained.length - 1].count : 0;
  if (!(n > 0)) return null;
  const rank = q * n;
  let lowerLe = 0;
  let lowerCount = 0;
  for (const b of gained) {
    if (b.count >= rank) {
      // Past the last finite bound there is nothing to interpolate to: the bound is the best estimate.
      if (!Number.isFinite(b.le)) return lowerLe;
      const inBucket = b.count - lowerCount;
      return inBucket > 0 ? lowerLe + ((b.le - lowerLe) * (rank - lowerCount)) / inBucket : b.le;
    }
    lowerLe = b.le;
    lowerCount = b.count;
  }
  return lowerLe;
}

/** Change of a counter per second between two figures; null across a reset (the service restarted). */
function rate(a, b, pick) {
  const dt = b.t - a.t;
  const x = pick(a);
  const y = pick(b);
  if (!(dt > 0) || x === null || y === null || y < x) return null;
  return (y - x) / dt;
}

/** The scrapes kept, oldest first, and the series the graphs draw from them. */
export class Scrapes {
  constructor(samples = []) {
    this.samples = samples.filter((s) => s && typeof s.t === 'number');
    // Kept as JSON, where the +Inf bucket's bound became null.
    for (const f of this.samples) for (const b of f.downtime.buckets) if (b.le === null) b.le = Infinity;
  }

  /** Adds a scrape's figures; forgets those older than [`KEEP_S`] before it. */
  add(fig) {
    this.samples.push(fig);
    const cutoff = fig.t - KEEP_S;
    while (this.samples.length && this.samples[0].t < cutoff) this.samples.shift();
  }

  /** The scrape at least `window` seconds before sample `i` (the newest such), or the oldest one. */
  before(i, window) {
    const t = this.samples[i].t - window;
    let j = 0;
    for (let k = i - 1; k >= 0; k--) {
      if (this.samples[k].t <= t) {
        j = k;
        break;
      }
    }
    return j;
  }

  /** The series: `{t, phones, sites: {id: []}, perMinute: {committed, aborted, failovers}, downtime: {p50, p99, mean}, heartbeats, http: {cls: []}, cpu, rssMiB}`, aligned on `t`. */
  series() {
    const s = this.samples;
    const siteIds = [...new Set(s.flatMap((f) => Object.keys(f.sitePhones)))].sort();
    const out = {
      t: s.map((f) => f.t),
      phones: s.map((f) => f.phones),
      sites: Object.fromEntries(siteIds.map((id) => [id, s.map((f) => f.sitePhones[id] ?? null)])),
      perMinute: { committed: [], aborted: [], failovers: [] },
      downtime: { p50: [], p99: [], mean: [] },
      heartbeats: [],
      http: { '2xx': [], '3xx': [], '4xx': [], '5xx': [] },
      cpu: [],
      rssMiB: s.map((f) => (f.rss === null ? null : f.rss / (1 << 20))),
    };
    for (let i = 0; i < s.length; i++) {
      const prev = i > 0 ? s[i - 1] : null;
      // Per-minute figures and quantiles over the trailing window: a few migrations a minute would otherwise be
      // spikes in one 5-second step and gaps everywhere else.
      const w = i > 0 ? s[this.before(i, WINDOW_S)] : null;
      for (const k of ['committed', 'aborted', 'failovers']) {
        const d = w ? s[i][k] - w[k] : null;
        out.perMinute[k].push(d === null || d < 0 ? null : d);
      }
      if (w && s[i].downtime.count >= w.downtime.count) {
        const n = s[i].downtime.count - w.downtime.count;
        const ms = (x) => (x === null ? null : x * 1e3);
        out.downtime.p50.push(ms(quantileBetween(w.downtime.buckets, s[i].downtime.buckets, 0.5)));
        out.downtime.p99.push(ms(quantileBetween(w.downtime.buckets, s[i].downtime.buckets, 0.99)));
        out.downtime.mean.push(n > 0 ? ((s[i].downtime.sum - w.downtime.sum) / n) * 1e3 : null);
      } else {
        out.downtime.p50.push(null);
        out.downtime.p99.push(null);
        out.downtime.mean.push(null);
      }
      out.heartbeats.push(prev ? rate(prev, s[i], (f) => f.heartbeats) : null);
      for (const cls of Object.keys(out.http)) out.http[cls].push(prev ? rate(prev, s[i], (f) => f.http[cls]) : null);
      out.cpu.push(prev ? rate(prev, s[i], (f) => f.cpu) : null);
    }
    return out;
  }
}
