// The follow-me hint under the map: what the placer will do, in its own terms. The placer (docs/CONTROL-PLANE.md)
// moves a phone when another healthy site answers faster by its margin (so many ms and so much of the current round
// trip) for its dwell time, in the round trips the user's terminal reports; the page reports the figures its table
// shows, so the hint and the map agree with the placer. Pure: tests/browser/unit.mjs runs it under node.

/** The placer's default margin, for a control plane that does not say its rules. */
const DEFAULT_MARGIN = { min_gain_ms: 2, min_gain_ratio: 0.2 };

/**
 * The hint for `sites` ({id, healthy, draining}) with round trips `rtts` (ms or null, by index), the phone on `home`,
 * the placer's `rules` ({min_gain_ms, min_gain_ratio, dwell_ms}, or null when no placer runs), whether this page is
 * `reporting` where the user is, and `closer` (what the last call returned) at `now` (ms). Returns `{best, text,
 * closer}`: `best` is the closer site (shown before `text`) or null, `closer` is `{site, since, leftMs}` while a site
 * is closer by the margin, else null.
 */
export function followHint({ sites, rtts, home, rules, reporting, closer, now }) {
  const i = sites.findIndex((s) => s.id === home);
  const here = i >= 0 ? rtts[i] : null;
  let bestI = -1;
  sites.forEach((s, j) => {
    if (rtts[j] !== null && s.healthy && !s.draining && (bestI < 0 || rtts[j] < rtts[bestI])) bestI = j;
  });
  const margin = rules || DEFAULT_MARGIN;
  const gain = here !== null && bestI >= 0 && bestI !== i ? here - rtts[bestI] : 0;
  if (gain > 0 && gain >= margin.min_gain_ms && gain >= margin.min_gain_ratio * here) {
    const best = sites[bestI].id;
    const since = closer && closer.site === best ? closer.since : now;
    const figures = `(${rtts[bestI].toFixed(0)} ms, against ${here.toFixed(0)} ms)`;
    let then;
    let leftMs = null;
    if (!rules) {
      then = 'Phones are not moved here: the placer is off.';
    } else if (!reporting) {
      then = 'Your phone follows once this page says where you are: drag the blue dot.';
    } else {
      leftMs = Math.max(0, rules.dwell_ms - (now - since));
      then =
        leftMs > 0 ? `Your phone moves there in about ${Math.ceil(leftMs / 1000)} s if it stays closer.` : 'Your phone is moving there now…';
    }
    return { best, text: ` is closer ${figures}. ${then}`, closer: { site: best, since, leftMs } };
  }
  let text;
  if (!reporting) text = 'Drag the blue dot: that is you. Walk toward another site and your phone follows, live.';
  else if (bestI === i && i >= 0) text = 'Your phone runs on the closest site.';
  else if (here !== null && bestI >= 0) text = `No site is closer by the placer’s margin: your phone stays on ${home}.`;
  else text = 'Measuring the round trip to each site…';
  return { best: null, text, closer: null };
}
