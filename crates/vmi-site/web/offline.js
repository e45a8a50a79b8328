// Offline in the browser (docs/OFFLINE.md): "Take offline" checks the phone out under the same lease
// as `vmi terminal checkout`, and the page runs it itself (offline-phone.js) until "Check in" sends it back. The
// checkout and the state saved since live in the browser's storage (IndexedDB), so the phone survives reloads and
// works with no network; the service worker (sw.js) serves the page itself when the site cannot.

import { encodeClient } from './codec.js';
import { PagePhone } from './offline-phone.js';

const DB = 'vmi-offline';
const STORE = 'checkouts';
/** How long after the last event the state is saved (and at once when the page is hidden or closed). */
const SAVE_AFTER_MS = 300;

function db() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE);
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function tx(mode, f) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(STORE, mode);
    const req = f(t.objectStore(STORE));
    t.oncomplete = () => resolve(req && req.result);
    t.onerror = () => reject(t.error);
  });
}

/** The checkout this browser holds for `token` ({token, lease, bundle, saved, savedAt}), or null. */
export async function storedCheckout(token) {
  if (typeof indexedDB === 'undefined') return null;
  const found = await tx('readonly', (s) => s.get('phone')).catch(() => null);
  return found && found.token === token ? found : null;
}

const keep = (record) => tx('readwrite', (s) => s.put(record, 'phone'));
const forget = () => tx('readwrite', (s) => s.delete('phone'));

async function answerError(r) {
  const v = await r.json().catch(() => ({}));
  return new Error(v.error || `the site answered ${r.status}`);
}

/** Checks the token's phone out of the site that served the page and keeps the checkout in this browser. */
export async function checkOut(token) {
  const r = await fetch('v1/me/checkout', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw await answerError(r);
  const bundle = new Uint8Array(await r.arrayBuffer());
  await keep({ token, bundle, saved: null, savedAt: null });
}

/** Fetches the page's offline module (the service worker keeps a copy for when the site cannot answer). */
async function moduleBytes() {
  const r = await fetch('offline-phone.wasm');
  if (!r.ok) throw new Error(`offline-phone.wasm: ${r.status}`);
  return r.arrayBuffer();
}

/**
 * The session of a phone running in this page: what input.js, sleep.js and terminal.js call on a site's session
 * (`sendInput`, `sleep`, `wake`, `displayChanged`, ...), given to the phone here instead of sent.
 */
export class OfflineSession {
  constructor({ vmi, token, record, display, status, notifications, ui }) {
    this.vmi = vmi;
    this.token = token;
    this.record = record;
    this.display = display;
    this.status = status;
    this.notifications = notifications;
    this.ui = ui;
    this.pings = { schedule() {}, sent() {} };
    this.onClipboard = null;
    this.timer = 0;
    this.saveTimer = 0;
    this.seq = 0;
  }

  /** Starts the phone from the stored checkout. */
  async start() {
    const { vmi, record } = this;
    vmi.state = 'offline';
    vmi.offline = { user: null, saves: 0, checkedIn: false, error: null };
    this.showChip('Starting your phone on this device…');
    const t0 = performance.now();
    try {
      this.phone = await PagePhone.start({ bundle: record.bundle, saved: record.saved, moduleBytes: await moduleBytes() });
      // what starting costs here: fetching the module, checking and instrumenting the image, restoring (tests report it)
      vmi.offline.startMs = Math.round(performance.now() - t0);
    } catch (e) {
      this.fail(`Your phone could not start on this device: ${e.message}`);
      return;
    }
    vmi.offline.user = this.phone.lease.user;
    vmi.offline.leaseEnds = this.phone.lease.expires_ms;
    const display = this.display.wanted();
    if (display) this.give({ type: 'Display', display });
    this.afterEvent(false);
    this.status.setState('offline');
    this.showChip();
    window.addEventListener('pagehide', () => this.saveNow());
    document.addEventListener('visibilitychange', () => document.visibilityState === 'hidden' && this.saveNow());
  }

  showChip(note) {
    const { ui, vmi } = this;
    if (!ui.offlineChip) return;
    ui.offlineChip.hidden = false;
    if (note) ui.offlineChip.classList.remove('folded');
    if (!this.chipBound) {
      // A tap on the text folds it to one line over the phone's status bar, and unfolds it again.
      this.chipBound = true;
      ui.offlineText.addEventListener('click', () => ui.offlineChip.classList.toggle('folded'));
      if (ui.offlineBtn) {
        ui.offlineBtn.disabled = true;
        ui.offlineNote.textContent = 'Your phone is on this device now: "Check in" on its screen sends it back.';
      }
    }
    const ends = vmi.offline && vmi.offline.leaseEnds ? new Date(vmi.offline.leaseEnds) : null;
    const until = ends ? ` until ${ends.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short', hourCycle: 'h23' })}` : '';
    ui.offlineText.textContent =
      note ||
      `Your phone is running on this device${until}. It may be slower: this browser runs it instead of your site's ` +
        'server. Check it in when you are back online; until then no other device can use it.';
  }

  fail(text) {
    this.vmi.offline.error = text;
    this.showChip(text);
  }

  give(message) {
    if (!this.phone) return;
    this.phone.message(encodeClient(message));
  }

  sendInput(input) {
    if (!this.phone) return;
    this.seq += 1;
    this.vmi.inputSeq = this.seq;
    this.give({ type: 'Input', seq: this.seq, input });
    this.afterEvent(true);
  }

  sleep() {
    this.give({ type: 'Sleep' });
    this.afterEvent(true);
    this.status.queue();
  }

  wake() {
    this.give({ type: 'Wake' });
    this.afterEvent(true);
    this.status.queue();
  }

  displayChanged() {
    const display = this.display.wanted();
    if (!display || !this.phone) return;
    this.vmi.displayChanges = (this.vmi.displayChanges || 0) + 1;
    this.give({ type: 'Display', display });
    this.afterEvent(true);
  }

  retryNow() {}

  refuse(text) {
    this.status.showError(text);
  }

  persist() {}

  /** Shows what the phone drew and said, arms the next timer, and saves soon. */
  afterEvent(changed) {
    const { phone, vmi, display } = this;
    if (phone.crashed) {
      this.fail(`Your phone stopped: ${phone.crashed}. What it had saved is kept; check in to resume it on its site.`);
      return;
    }
    const frame = phone.frame();
    if (frame && !vmi.asleep) {
      display.resize(frame.width, frame.height);
      frame.copyTo(display.screen.rgba);
      display.paint(frame.rects);
      vmi.frames++;
    }
    const out = phone.outputs();
    for (const n of out.notifications) this.notifications.notify(n);
    if (out.clipboard !== null && this.onClipboard) this.onClipboard(out.clipboard);
    clearTimeout(this.timer);
    const next = phone.host.next_timer_ms();
    if (next >= 0) {
      this.timer = setTimeout(() => {
        phone.fireTimers();
        this.afterEvent(true);
      }, Math.min(next, 2 ** 31 - 1));
    }
    if (changed) {
      clearTimeout(this.saveTimer);
      this.saveTimer = setTimeout(() => this.saveNow(), SAVE_AFTER_MS);
    }
  }

  /** Keeps the phone's state in this browser now. */
  saveNow() {
    clearTimeout(this.saveTimer);
    if (!this.phone || this.phone.crashed || this.vmi.offline.checkedIn) return Promise.resolve();
    const t0 = performance.now();
    this.record.saved = this.phone.save();
    this.vmi.offline.saveMs = Math.round(performance.now() - t0);
    this.vmi.offline.savedBytes = this.record.saved.length;
    this.record.savedAt = Date.now();
    const done = keep(this.record).then(() => {
      this.vmi.offline.saves++;
    });
    this.saving = done;
    return done;
  }

  /** Sends the phone back to its site; the page then reloads and connects to it there. */
  async checkIn() {
    if (!this.phone) {
      throw new Error(
        'Your phone never started on this device, so it cannot be checked in from here: its lease ends on its own, ' +
          'or your operator can cancel it (the phone then resumes on its site as it left).',
      );
    }
    if (!this.phone.crashed) await this.saveNow();
    return this.send(this.phone.checkin(this.record.saved));
  }

  async send(body) {
    const { vmi } = this;
    const user = vmi.offline.user;
    this.showChip('Checking your phone in…');
    let r;
    try {
      r = await fetch(`v1/phones/${encodeURIComponent(user)}/checkin`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/octet-stream' },
        body,
      });
    } catch (e) {
      this.showChip(`Your site cannot be reached (${e.message}); your phone keeps running here. Try again when you are online.`);
      return false;
    }
    if (!r.ok) {
      const e = await answerError(r);
      this.showChip(`The site did not take your phone back: ${e.message}`);
      return false;
    }
    vmi.offline.checkedIn = true;
    clearTimeout(this.timer);
    await forget();
    location.reload();
    return true;
  }
}

/** The "Take offline" and "Check in" buttons. */
export function bindOffline({ ui, token, getSession }) {
  if (ui.offlineBtn) {
    ui.offlineBtn.addEventListener('click', async (ev) => {
      ev.preventDefault();
      ui.offlineBtn.disabled = true;
      ui.offlineNote.textContent = 'Checking your phone out…';
      try {
        await checkOut(token);
        // The page's files must be kept for a reload with no network: the service worker keeps what the page loads
        // while it is in control.
        if ('serviceWorker' in navigator) {
          await Promise.race([navigator.serviceWorker.ready, new Promise((r) => setTimeout(r, 3000))]);
        }
        location.reload();
      } catch (e) {
        ui.offlineNote.textContent = `Your phone could not be checked out: ${e.message}`;
        ui.offlineBtn.disabled = false;
      }
    });
  }
  if (ui.checkinBtn) {
    ui.checkinBtn.addEventListener('click', async (ev) => {
      ev.preventDefault();
      const session = getSession();
      if (!session || !session.checkIn) return;
      ui.checkinBtn.disabled = true;
      try {
        await session.checkIn();
      } catch (e) {
        session.showChip(e.message);
      } finally {
        ui.checkinBtn.disabled = false;
      }
    });
  }
}
