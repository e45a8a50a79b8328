// Seed VMI browser terminal: shows the phone's pixels and sends touches and keys.
//
// ES2020 modules, no dependencies, no build step: the browser loads this entry and the
// modules it imports. The wire format is docs/PROTOCOL.md (version 1), byte for byte.
//   codec.js, lz4.js, screen.js  the protocol's messages, Lz4 tiles, the framebuffer and
//                                its hash (pure: tests/browser/unit.mjs runs them under node)
//   session.js                   the session: Hello/Resume, inputs and acks, Redirect, reconnect
//   display.js, status.js, notifications.js, input.js, sleep.js   the page around it
//   map.js, history.js           the follow-me map and "Restore my phone to…"
//   offline.js, offline-phone.js  the phone checked out and run in this page; sw.js keeps the page for offline

import { Display } from './display.js';
import { startHistory } from './history.js';
import { bindInput } from './input.js';
import { startMap } from './map.js';
import { Notifications } from './notifications.js';
import { OfflineSession, bindOffline, storedCheckout } from './offline.js';
import { bindPairCode, showPairForm } from './pairing.js';
import { hashHex, screenHashParts } from './screen.js';
import { Session } from './session.js';
import { bindSleep } from './sleep.js';
import { Status } from './status.js';
import { loadSession, takeToken } from './storage.js';

/** The page's elements the terminal shows things in, by role. */
function pageElements() {
  const $ = (id) => document.getElementById(id);
  return {
    stage: $('stage'),
    phone: $('phone'),
    stateDot: $('state-dot'),
    stateText: $('state-text'),
    rtt: $('m-rtt'),
    quality: $('m-quality'),
    fps: $('m-fps'),
    rate: $('m-rate'),
    bytes: $('m-bytes'),
    frames: $('m-frames'),
    size: $('m-size'),
    sleepBtn: $('sleep-btn'),
    wakeBtn: $('wake-btn'),
    backBtn: $('back-btn'),
    homeBtn: $('home-btn'),
    sleepOverlay: $('sleep-overlay'),
    lockClock: $('lock-clock'),
    lockList: $('lock-notes'),
    connOverlay: $('conn-overlay'),
    connText: $('conn-text'),
    toasts: $('toasts'),
    error: $('error'),
    keys: $('keys'),
    bar: document.querySelector('.bezel-bottom'),
    keyboardBtn: $('keyboard-btn'),
    fullscreenBtn: $('fullscreen-btn'),
    menuBtn: $('menu-btn'),
    side: $('side'),
    pfDot: $('pf-dot'),
    moveChip: $('move-chip'),
    connDetail: $('conn-detail'),
    retryBtn: $('retry-btn'),
    connSafe: $('conn-safe'),
    volUpBtn: $('vol-up-btn'),
    volDownBtn: $('vol-down-btn'),
    powerBtn: $('power-btn'),
    clipChip: $('clip-chip'),
    clipText: $('clip-text'),
    clipCopy: $('clip-copy'),
    pairPanel: $('pair-panel'),
    pairForm: $('pair-panel'),
    pairCode: $('pair-code'),
    pairName: $('pair-name'),
    pairSubmit: $('pair-submit'),
    pairError: $('pair-error'),
    pairNewBtn: $('pair-new-btn'),
    pairNewCode: $('pair-new-code'),
    offlineChip: $('offline-chip'),
    offlineText: $('offline-text'),
    checkinBtn: $('checkin-btn'),
    offlineBtn: $('offline-btn'),
    offlineNote: $('offline-note'),
  };
}

/** Phone first on a touch device or a narrow window (style.css draws it): the screen is the terminal. */
const PHONE_FIRST = '(max-width: 600px), (pointer: coarse) and (max-width: 1100px)';

/** Follows the layout the device wants, refitting the screen on every change (a rotation, a resize). */
function bindLayout(ui, display) {
  const query = matchMedia(PHONE_FIRST);
  const apply = () => {
    document.body.classList.toggle('phone-first', query.matches);
    display.fit();
  };
  query.addEventListener('change', apply);
  apply();
  if (ui.fullscreenBtn) {
    ui.fullscreenBtn.hidden = !document.fullscreenEnabled;
    ui.fullscreenBtn.addEventListener('click', (ev) => {
      ev.preventDefault();
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
      else document.documentElement.requestFullscreen({ navigationUI: 'hide' }).catch(() => {});
    });
    document.addEventListener('fullscreenchange', () => display.fit());
  }
  if (ui.menuBtn && ui.side) {
    // The menu holds what the side panel holds (the map, migrations, checkpoints) once there is any.
    const shown = () => {
      ui.menuBtn.hidden = ui.side.hidden;
    };
    new MutationObserver(shown).observe(ui.side, { attributes: true, attributeFilter: ['hidden'] });
    shown();
    ui.menuBtn.addEventListener('click', (ev) => {
      ev.preventDefault();
      document.body.classList.toggle('map-open');
      display.fit();
    });
  }
}

/**
 * Text the phone copied goes on this device's clipboard. Browsers allow that without a gesture only to a focused
 * page they trust (Chromium: the clipboard-write permission); otherwise a chip offers the text and a Copy button,
 * whose tap is the gesture the browser asks for.
 */
function bindClipboard(ui, vmi, session) {
  const write = (text) =>
    navigator.clipboard && navigator.clipboard.writeText ? navigator.clipboard.writeText(text) : Promise.reject(new Error('no clipboard'));
  const shown = { text: '' };
  session.onClipboard = (text) => {
    vmi.clipboard = { text, onDevice: false };
    write(text).then(
      () => {
        vmi.clipboard.onDevice = true;
        if (ui.clipChip) ui.clipChip.hidden = true;
      },
      () => {
        if (!ui.clipChip) return;
        shown.text = text;
        ui.clipText.textContent = `Your phone copied “${text.length > 40 ? `${text.slice(0, 40)}…` : text}”`;
        ui.clipChip.hidden = false;
      },
    );
  };
  if (ui.clipCopy) {
    ui.clipCopy.addEventListener('click', (ev) => {
      ev.preventDefault();
      write(shown.text).then(() => {
        if (vmi.clipboard) vmi.clipboard.onDevice = true;
        ui.clipChip.hidden = true;
      }, () => {
        ui.clipText.textContent = 'This browser does not allow the page to copy: select the text in the phone instead';
      });
    });
  }
}

/** Starts the terminal in this page. Returns its figures (also `window.vmi`, read by tests). */
export function start() {
  const canvas = document.getElementById('screen');
  const ui = pageElements();
  const vmi = {
    state: 'connecting', // connecting | connected | asleep | moving (a planned Redirect) | reconnecting | closed
    movingTo: null, // where a planned move goes (host), while moving
    attempts: 0, // failed tries since the last Welcome (the outage panel says so)
    nextRetryAt: null, // Date.now() of the next try, while reconnecting
    frames: 0, // FrameUpdates applied
    copies: 0, // Copy tiles applied (a scroll moved on this screen instead of being sent again)
    bytes: 0, // all bytes received (message payloads)
    frameBytes: 0, // bytes of FrameUpdate messages received
    notifications: [], // {title, body, at_ms}
    lastSeq: 0, // seq of the last FrameUpdate applied
    latencyMs: null, // round trip to the phone's site: the least of the last three Ping -> Pong
    quality: null, // {rttMs, fps, bytesPerSecond, level}: the connection indicator (status.js)
    width: 0,
    height: 0,
    asleep: false,
    error: null, // last error text shown, or null
    url: null, // WebSocket URL of the current site
    inputSeq: 0, // seq of the last input sent
    inputAcked: 0, // highest input seq acknowledged
    pendingInputs: 0, // inputs kept until acknowledged
    screenHash: () => hashHex(display.screen ? display.screen.hash() : screenHashParts(new Uint8Array(0))),
    sleep: () => power && power.sleep(false),
    wake: () => power && power.wake(),
  };
  window.vmi = vmi;

  const { token, saved: savedToken } = takeToken();
  const saved = token ? loadSession(token) : null;
  const display = new Display(canvas, ui, vmi);
  const status = new Status(vmi, ui);
  const notifications = new Notifications(vmi, ui);
  if (saved) {
    vmi.lastSeq = saved.lastSeq || 0;
    if (saved.width && saved.height) display.resize(saved.width, saved.height);
  }
  let session = null;
  let power = null;
  /** Binds the page to `s`: the site's session, or the phone running in this page. */
  const bindSession = (s) => {
    session = s;
    if (ui.retryBtn) {
      ui.retryBtn.addEventListener('click', (ev) => {
        ev.preventDefault();
        s.retryNow();
      });
    }
    power = bindSleep({ vmi, session: s, notifications });
    bindLayout(ui, display);
    bindInput({ vmi, canvas, ui, display, session: s, power });
    bindClipboard(ui, vmi, s);
    // A rotation or a resized window reaches the phone once the layout settles.
    let settle = null;
    display.onFit = () => {
      clearTimeout(settle);
      settle = setTimeout(() => s.displayChanged(), 120);
    };
    display.fit();
    status.render();
  };
  const online = () => {
    const s = new Session({ vmi, token, saved, display, status, notifications });
    // A link's token that differs from the device this browser keeps: if it is refused, that device is still there.
    s.savedOther = savedToken && savedToken !== token ? savedToken : null;
    return s;
  };

  if (!token) {
    bindSession(online());
    // The pairing form says what to do; no error line or "Disconnected" over it.
    session.fatal = true;
    status.setState('pairing');
    showPairForm(ui, vmi);
    return vmi;
  }
  bindPairCode(ui, token);
  bindOffline({ ui, token, getSession: () => session });
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch(() => {});
  // A phone checked out to this browser runs here (also with no network); otherwise the site runs it.
  storedCheckout(token)
    .catch(() => null)
    .then((record) => {
      if (record) {
        bindSession(new OfflineSession({ vmi, token, record, display, status, notifications, ui }));
        session.start();
      } else {
        bindSession(online());
        session.connect();
      }
    });
  startMap({ vmi, token, relayout: () => display.fit() });
  startHistory({ vmi, token });
  return vmi;
}

if (typeof window !== 'undefined' && typeof document !== 'undefined' && document.getElementById('screen')) {
  start();
}
