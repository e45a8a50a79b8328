// The status bar and overlays: the session's state, round trip, bytes, frames, the
// sleep/wake buttons, "Reconnecting…" and the error line, all read from `vmi`.

import { formatBytes } from './format.js';

export class Status {
  /** `vmi` holds the page's figures; `ui` the elements that show them. */
  constructor(vmi, ui) {
    this.vmi = vmi;
    this.ui = ui;
    this.queued = false;
  }

  /** Shows `vmi` now. */
  render() {
    const { vmi, ui } = this;
    this.queued = false;
    ui.stateText.textContent = vmi.state;
    ui.stateDot.dataset.state = vmi.state;
    if (ui.pfDot) ui.pfDot.dataset.state = vmi.state;
    document.body.dataset.state = vmi.state;
    ui.rtt.textContent = vmi.latencyMs === null ? '–' : `${vmi.latencyMs} ms`;
    ui.bytes.textContent = formatBytes(vmi.bytes);
    ui.frames.textContent = String(vmi.frames);
    ui.sleepBtn.hidden = vmi.asleep;
    ui.wakeBtn.hidden = !vmi.asleep;
    ui.sleepOverlay.hidden = !vmi.asleep;
    // A planned move shows a chip over the last frame, never the overlay.
    if (ui.moveChip) {
      ui.moveChip.hidden = vmi.state !== 'moving';
      ui.moveChip.textContent = vmi.state === 'moving' ? `Moving to ${vmi.movingTo || 'another site'}…` : '';
    }
    // Offline, the phone runs in this page: nothing to connect to (offline.js says so on the screen).
    const showConn = !vmi.asleep && !['connected', 'moving', 'offline'].includes(vmi.state);
    ui.connOverlay.hidden = !showConn;
    if (showConn) {
      ui.connText.textContent =
        vmi.state === 'closed' ? 'Disconnected' : vmi.state === 'reconnecting' ? 'Cannot reach your phone’s site' : 'Connecting…';
    }
    // A real outage says what is happening: the tries, the next one, a way to try now, and that the phone is safe.
    const outage = showConn && vmi.state === 'reconnecting';
    if (ui.connDetail) {
      ui.connDetail.hidden = !outage;
      ui.retryBtn.hidden = !outage;
      ui.connSafe.hidden = !outage;
      if (outage) {
        const left = vmi.nextRetryAt ? Math.max(0, Math.ceil((vmi.nextRetryAt - Date.now()) / 1000)) : 0;
        const tries = vmi.attempts === 1 ? '1 try' : `${vmi.attempts || 0} tries`;
        ui.connDetail.textContent = left > 0 ? `${tries} so far; the next in ${left} s` : `${tries} so far; trying now…`;
        ui.connSafe.textContent =
          'Your phone is safe: it keeps running on its site, or starts on another within seconds if that site is ' +
          'down. What you typed is kept here until the phone has it.';
        // the countdown moves on its own
        this.queueIn(500);
      }
    }
    // During an outage the panel says it in plain words; the raw close reason ("closed (1006)") would only repeat it.
    const explained = !vmi.asleep && vmi.state === 'reconnecting' && !!ui.connDetail;
    ui.error.hidden = !vmi.error || explained;
    ui.error.textContent = vmi.error || '';
  }

  /** Shows `vmi` again in `ms` (a countdown). */
  queueIn(ms) {
    clearTimeout(this.later);
    this.later = setTimeout(() => this.queue(), ms);
  }

  /** Shows `vmi` soon (once for many changes). */
  queue() {
    if (!this.queued) {
      this.queued = true;
      // rAF does not run in a hidden tab; a timer keeps the text right there too
      setTimeout(() => this.render(), 50);
    }
  }

  /** The session's state: connecting | connected | asleep | moving | reconnecting | closed | offline. */
  setState(s) {
    this.vmi.state = s;
    this.queue();
  }

  /** The error line's text (null hides it). */
  showError(text) {
    this.vmi.error = text;
    this.queue();
  }
}
