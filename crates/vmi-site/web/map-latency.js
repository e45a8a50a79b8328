import { reachable } from './api.js';

// The round trip from this page to each site, measured by fetching its /healthz. After
// the user's position lands at the control service (and so at the delay proxies), only
// samples taken since count.

const PROBES_KEPT = 3;
/** The delay proxies pick up a reported position within ~0.5 s. */
export const PROBE_SETTLE_MS = 800;

export class RoundTrips {
  constructor() {
    this.probes = new Map(); // site id -> [{ms, at}]
    this.freshSince = Infinity; // probes from this time on saw the reported position
    this.probing = false;
  }

  /** The position landed now: samples from PROBE_SETTLE_MS on are fresh. */
  settle() {
    this.freshSince = performance.now() + PROBE_SETTLE_MS;
  }

  /** The round trip to a site: the least of the fresh samples (`freshOnly`), or else the newest sample; null when
   * the site did not answer the last probe (an old figure would say it is there). */
  rttOf(id, freshOnly) {
    if (this.silent(id)) return null;
    const all = (this.probes.get(id) || []).filter((p) => p.ms !== null);
    const fresh = all.filter((p) => p.at >= this.freshSince);
    if (fresh.length) return Math.min(...fresh.map((p) => p.ms));
    return freshOnly || !all.length ? null : all[all.length - 1].ms;
  }

  /** Measures every site of `sites` ({id, url}) once, all at the same time. */
  async probe(sites) {
    this.probing = true;
    try {
      await Promise.all(sites.map((s) => this.probeSite(s)));
    } finally {
      this.probing = false;
    }
  }

  /** Whether the site did not answer its last probe. */
  silent(id) {
    const all = this.probes.get(id) || [];
    return all.length > 0 && all[all.length - 1].ms === null;
  }

  async probeSite(s) {
    const at = performance.now();
    let ms = null;
    try {
      // an opaque answer is enough: only the time matters
      await fetch(reachable(`${s.url}/healthz`), { mode: 'no-cors', cache: 'no-store' });
      ms = performance.now() - at;
    } catch {
      // no answer: recorded, so the page stops showing the last figure
    }
    const list = this.probes.get(s.id) || [];
    list.push({ ms, at });
    if (list.length > PROBES_KEPT) list.shift();
    this.probes.set(s.id, list);
  }
}
