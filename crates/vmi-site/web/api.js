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
