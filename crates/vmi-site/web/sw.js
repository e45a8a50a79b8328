// The page's service worker: the terminal's own files (the page, its modules, offline-phone.wasm) come from the site
// when it answers and from this browser's copy when it does not, so a phone checked out to this browser (offline.js)
// starts again after a reload with no network. The site's API (/v1/...) is never served from the copy.

const CACHE = 'vmi-terminal-v1';

self.addEventListener('install', (ev) => {
  ev.waitUntil(caches.open(CACHE).then((c) => c.add('./')).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (ev) => {
  ev.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== 'GET' || url.origin !== location.origin || url.pathname.startsWith('/v1/')) return;
  ev.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      try {
        const answer = await fetch(ev.request);
        if (answer.ok) await cache.put(ev.request, answer.clone());
        return answer;
      } catch (e) {
        const kept = await cache.match(ev.request, { ignoreSearch: true });
        if (kept) return kept;
        throw e;
      }
    })(),
  );
});
