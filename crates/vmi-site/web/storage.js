// What this page keeps in web storage: the device token (localStorage, so a reload or a
// new tab needs no link) and the session to resume (sessionStorage: this tab only).

const TOKEN_KEY = 'vmi.token';
const SESSION_KEY = 'vmi.session';

/**
 * The device token: from the page's address fragment (`#token=`, which browsers never send to a server; then
 * removed from the address bar), or else the one this browser remembers. `{token, saved}`: the token to use (null
 * when there is none) and the remembered one. A token from a link is remembered only once a site accepted it
 * (`rememberToken`), so a bad link never replaces a device that works.
 */
export function takeToken() {
  const url = new URL(location.href);
  let token = null;
  if (url.hash.length > 1) {
    const h = new URLSearchParams(url.hash.slice(1));
    if (h.has('token')) {
      token = h.get('token');
      h.delete('token');
      const rest = h.toString();
      url.hash = rest ? `#${rest}` : '';
      history.replaceState(history.state, '', url.pathname + url.search + url.hash);
    }
  }
  let saved = null;
  try {
    saved = localStorage.getItem(TOKEN_KEY);
  } catch {
    // storage unavailable (privacy mode): the token lives only in this page
  }
  return { token: token || saved || null, saved };
}

/** Remembers `token` as this browser's device: a site accepted it. */
export function rememberToken(token) {
  try {
    localStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage unavailable: the token lives only in this page
  }
}

/** The session saved by this tab for `token`, or null. */
export function loadSession(token) {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    if (s && s.token === token) return s;
  } catch {
    // ignore a broken entry
  }
  return null;
}

/** Remembers `session` ({token, lastSeq, width, height, kept, nextSeq}) for a reload. */
export function saveSession(session) {
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  } catch {
    // best effort
  }
}
