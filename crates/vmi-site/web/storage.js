// What this page keeps in web storage: the device token (localStorage, so a reload or a
// new tab needs no link) and the session to resume (sessionStorage: this tab only).

const TOKEN_KEY = 'vmi.token';
const SESSION_KEY = 'vmi.session';

/**
 * The device token: from the page's address fragment (`#token=`, which browsers never send
 * to a server; then removed from the address bar and remembered), or else the one
 * remembered. Null when there is none.
 */
export function takeToken() {
  const url = new URL(location.href);
  let token = null;
  let changed = false;
  if (url.hash.length > 1) {
    const h = new URLSearchParams(url.hash.slice(1));
    if (h.has('token')) {
      token = h.get('token');
      h.delete('token');
      const rest = h.toString();
      url.hash = rest ? `#${rest}` : '';
      changed = true;
    }
  }
  if (changed) history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else token = localStorage.getItem(TOKEN_KEY);
  } catch {
    // storage unavailable (privacy mode): the token lives only in this page
  }
  return token || null;
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
