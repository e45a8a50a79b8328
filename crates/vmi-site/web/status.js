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
    const showConn = !vmi.asleep && vmi.state !== 'connected' && vmi.state !== 'moving';
    ui.connOverlay.hidden = !showConn;
    if (showConn) {
      ui.connText.textContent =
        vmi.state === 'closed' ? 'Disconnected' : vmi.state === 'reconnecting' ? 'Reconnecting…' : 'Connecting…';
    }
    ui.error.hidden = !vmi.error;
    ui.error.textContent = vmi.error || '';
  }

  /** Shows `vmi` soon (once for many changes). */
  queue() {
    if (!this.queued) {
      this.queued = true;
      // rAF does not run in a hidden tab; a timer keeps the text right there too
      setTimeout(() => this.render(), 50);
    }
  }

  /** The session's state: connecting | connected | asleep | moving | reconnecting | closed. */
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
