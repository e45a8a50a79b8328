// The phone's notifications: a toast while awake, the lock screen's list while asleep
// (toasted on wake only if the tab was hidden, so nobody saw the lock screen), and the lock screen's clock.

const LOCK_NOTES_KEPT = 20;
const TOASTS_SHOWN = 3;

function noteElement(n, cls) {
  const el = document.createElement('div');
  el.className = cls;
  const t = document.createElement('div');
  t.className = 'note-title';
  t.textContent = n.title;
  const when = document.createElement('span');
  when.className = 'note-time';
  const d = new Date(n.at_ms || Date.now());
  when.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  t.appendChild(when);
  const b = document.createElement('div');
  b.className = 'note-body';
  b.textContent = n.body;
  el.append(t, b);
  return el;
}

export class Notifications {
  /** `vmi.notifications` lists every one received; `ui` holds toasts, lockList, lockClock. */
  constructor(vmi, ui) {
    this.vmi = vmi;
    this.ui = ui;
    this.unseen = []; // notifications that came while asleep in a hidden tab: toasted on wake
    setInterval(() => {
      if (vmi.asleep) this.updateLockClock();
    }, 15000);
  }

  /** One notification ({title, body, at_ms}) from the phone. */
  notify(n) {
    const { vmi, ui } = this;
    vmi.notifications.push(n);
    ui.lockList.prepend(noteElement(n, 'lock-note'));
    while (ui.lockList.children.length > LOCK_NOTES_KEPT) ui.lockList.lastChild.remove();
    // Asleep in sight, the lock screen shows it: seen, so waking does not replay it.
    if (!vmi.asleep) this.toast(n);
    else if (document.visibilityState !== 'visible') this.unseen.push(n);
  }

  toast(n) {
    const el = noteElement(n, 'toast');
    this.ui.toasts.prepend(el);
    while (this.ui.toasts.children.length > TOASTS_SHOWN) this.ui.toasts.lastChild.remove();
    setTimeout(() => {
      el.classList.add('leaving');
      setTimeout(() => el.remove(), 400);
    }, 5000);
  }

  /** The page went to sleep: the lock screen shows the time. */
  asleep() {
    this.updateLockClock();
  }

  /** The page woke: the lock screen empties, the last few nobody saw are toasted. */
  awake() {
    this.ui.lockList.replaceChildren();
    for (const n of this.unseen.slice(-TOASTS_SHOWN)) this.toast(n);
    this.unseen = [];
  }

  updateLockClock() {
    this.ui.lockClock.textContent = new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  }
}
