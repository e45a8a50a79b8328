// The serving site's JSON routes, as this page calls them.

/** GETs `path` as JSON (null for 204); throws on a status other than 2xx. */
export async function getJson(path, headers) {
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.status === 204 ? null : r.json();
}

/** POSTs `body` as JSON and returns the answer's JSON; throws with the site's `error` on a failure. */
export async function postJson(path, headers, body) {
  const r = await fetch(path, {
    method: 'POST',
    headers: { ...headers, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error || `${r.status}`);
  return v;
}

/** The request headers that carry the device token. */
export function bearer(token) {
  return { Authorization: `Bearer ${token}` };
}

/**
 * `url` as this page can reach it. A page served over plain HTTP on loopback (how `vmi up`
 * serves the browser demo: the provider CA is not one the browser trusts) reaches the other
 * loopback sites the same way, plain: each site answers plain HTTP and WebSockets from
 * loopback only. Anything else is left as it is.
 */
export function reachable(url) {
  if (location.protocol !== 'http:') return url;
  const u = new URL(url);
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname)) return url;
  if (u.protocol === 'wss:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'http:';
  return u.toString();
}
