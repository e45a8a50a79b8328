// The control service's API as the dashboard uses it: same origin, the operator's bearer token from this tab's
// sessionStorage (never the address: it would end up in history and logs), errors sorted into "refused" (sign in
// again) and "unreachable" (keep showing what we have, marked old).

const TOKEN_KEY = 'vmi.dashboard.operator';

/** The control service said no to the token (401, 403): the page goes back to its login with `message`. */
export class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The control service did not answer (network error) or answered with a server error. */
export class Unreachable extends Error {}

/** Any other refusal (400, 404, ...), with the service's own words. */
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The token this tab signed in with, or null. */
export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps `token` for this tab (sessionStorage: gone when the tab closes). */
export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** Forgets the token. */
export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * The token in what the operator pasted: the token itself, or the whole operator.json (its `token` field). Null
 * when it cannot be one (an operator token is 64 hex digits), so nothing malformed is sent.
 */
export function tokenFrom(input) {
  let text = String(input || '').trim();
  if (text.startsWith('{')) {
    try {
      text = String(JSON.parse(text).token || '');
    } catch {
      return null;
    }
  }
  return /^[0-9a-fA-F]{64}$/.test(text) ? text.toLowerCase() : null;
}

/** The `error` of a JSON error body, or the body's text, or the status line. */
async function reason(res) {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') return body.error;
  } catch {
    // not JSON: the text itself
  }
  return text.trim() || `${res.status} ${res.statusText}`;
}

/**
 * `GET path` with `token` (default: the stored one): the parsed JSON, or the text when `text` is set. Throws
 * [`Refused`], [`Unreachable`] or [`HttpError`].
 */
export async function get(path, { text = false, token = storedToken() } = {}) {
  if (!token) throw new Refused(401, 'Not signed in.');
  let res;
  try {
    res = await fetch(path, {
      headers: { Authorization: `Bearer ${token}`, Accept: text ? 'text/plain' : 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new Unreachable(`the control service does not answer (${e.message})`);
  }
  if (res.status === 401 || res.status === 403) throw new Refused(res.status, await reason(res));
  if (res.status >= 500) throw new Unreachable(`${res.status}: ${await reason(res)}`);
  if (!res.ok) throw new HttpError(res.status, await reason(res));
  return text ? res.text() : res.json();
}

/** `encodeURIComponent` for one path segment (a user name). */
export const seg = (s) => encodeURIComponent(s);
