// The user's touches and keys, sent to the phone: pointer on the canvas (down, move, up
// in phone pixels), keys and pastes, and the Back, Home, Sleep and Wake buttons.

/** Key codes of docs/PROTOCOL.md, by the browser's `KeyboardEvent.key`. */
const KEY_CODES = {
  Backspace: 1,
  Enter: 2,
  Escape: 3,
  ArrowLeft: 4,
  ArrowRight: 5,
  ArrowUp: 6,
  ArrowDown: 7,
  Home: 8,
  Delete: 9,
};
const KEY_TEXT = 0;
const KEY_ENTER = 2;
const KEY_BACK = 3;
const KEY_HOME = 8;
const PASTE_LIMIT = 2000;

/**
 * Binds the page's input. `session.sendInput(input)` sends; `power` is `{sleep, wake}`;
 * nothing is sent before the screen's size is known (`display.screen`).
 */
export function bindInput({ vmi, canvas, ui, display, session, power }) {
  const send = (input) => session.sendInput(input);
  const key = (code) => send({ kind: 'key', code, text: null });
  bindPointer({ vmi, canvas, display, send, power });
  bindKeys({ vmi, display, send, key, power });
  ui.sleepOverlay.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    power.wake();
  });
  const button = (el, fn) =>
    el.addEventListener('click', (ev) => {
      ev.preventDefault();
      el.blur(); // keys go to the phone, not to a focused button
      fn();
    });
  button(ui.sleepBtn, () => power.sleep(false));
  button(ui.wakeBtn, () => power.wake());
  button(ui.backBtn, () => !vmi.asleep && display.screen && key(KEY_BACK));
  button(ui.homeBtn, () => (vmi.asleep ? power.wake() : display.screen && key(KEY_HOME)));
}

/** Touches: the primary pointer on the canvas, in phone pixels. */
function bindPointer({ vmi, canvas, display, send, power }) {
  function phonePoint(ev) {
    const r = canvas.getBoundingClientRect();
    const w = vmi.width || canvas.width;
    const h = vmi.height || canvas.height;
    const x = Math.floor(((ev.clientX - r.left) / r.width) * w);
    const y = Math.floor(((ev.clientY - r.top) / r.height) * h);
    return { x: Math.min(w - 1, Math.max(0, x)), y: Math.min(h - 1, Math.max(0, y)) };
  }

  let pointerId = null;
  let last = null;
  canvas.addEventListener('pointerdown', (ev) => {
    if (!ev.isPrimary || (ev.pointerType === 'mouse' && ev.button !== 0)) return;
    ev.preventDefault();
    if (vmi.asleep) {
      power.wake();
      return;
    }
    if (!display.screen) return;
    pointerId = ev.pointerId;
    try {
      canvas.setPointerCapture(ev.pointerId);
    } catch {
      // not capturable (synthetic events)
    }
    last = phonePoint(ev);
    send({ kind: 'touch', phase: 0, x: last.x, y: last.y });
  });
  canvas.addEventListener('pointermove', (ev) => {
    if (ev.pointerId !== pointerId) return;
    const p = phonePoint(ev);
    if (p.x === last.x && p.y === last.y) return;
    last = p;
    send({ kind: 'touch', phase: 1, x: p.x, y: p.y });
  });
  const up = (ev) => {
    if (ev.pointerId !== pointerId) return;
    pointerId = null;
    const p = ev.type === 'pointercancel' ? last : phonePoint(ev);
    send({ kind: 'touch', phase: 2, x: p.x, y: p.y });
  };
  canvas.addEventListener('pointerup', up);
  canvas.addEventListener('pointercancel', up);
  canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());
}

/** Keys and pastes, page-wide. Asleep, Enter and Space wake the phone. */
function bindKeys({ vmi, display, send, key, power }) {
  window.addEventListener('keydown', (ev) => {
    if (ev.isComposing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const code = KEY_CODES[ev.key];
    const chars = [...ev.key];
    const printable = code === undefined && chars.length === 1 && ev.key >= ' ';
    if (code === undefined && !printable) return;
    ev.preventDefault();
    if (vmi.asleep) {
      if (code === KEY_ENTER || ev.key === ' ') power.wake();
      return;
    }
    if (!display.screen) return;
    if (printable) send({ kind: 'key', code: KEY_TEXT, text: ev.key });
    else key(code);
  });
  window.addEventListener('paste', (ev) => {
    if (vmi.asleep || !display.screen) return;
    const text = ev.clipboardData && ev.clipboardData.getData('text/plain');
    if (!text) return;
    ev.preventDefault();
    for (const ch of text.slice(0, PASTE_LIMIT)) {
      if (ch === '\n') key(KEY_ENTER);
      else if (ch >= ' ') send({ kind: 'key', code: KEY_TEXT, text: ch });
    }
  });
}
