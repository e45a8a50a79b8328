// The phone's screen on the page: the Screen the session applies updates to, copied to
// a canvas (alpha forced opaque) and scaled to fit the stage.

import { Screen } from './screen.js';

export class Display {
  /** `ui` holds the page's stage, phone (bezel) and size elements; `vmi` the page's figures. */
  constructor(canvas, ui, vmi) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.ui = ui;
    this.vmi = vmi;
    this.screen = null; // null until the size is known
    this.image = null; // ImageData shown on the canvas (alpha forced opaque)
    window.addEventListener('resize', () => this.fit());
  }

  /** A fresh black screen of w×h (nothing happens when the size is the same). */
  resize(w, h) {
    if (this.screen && this.screen.width === w && this.screen.height === h) return;
    this.screen = new Screen(w, h);
    const image = new ImageData(w, h);
    this.image = image;
    image.data.fill(0);
    for (let i = 3; i < image.data.length; i += 4) image.data[i] = 255;
    this.vmi.width = w;
    this.vmi.height = h;
    this.canvas.width = w;
    this.canvas.height = h;
    this.ctx.putImageData(image, 0, 0);
    this.ui.size.textContent = `${w}×${h}`;
    this.fit();
  }

  /** Applies one FrameUpdate's tiles to the screen and shows them. Throws ProtocolError. */
  apply(tiles) {
    this.paint(this.screen.apply(tiles));
  }

  /** Copies the screen's `rects` to the canvas. */
  paint(rects) {
    const W = this.screen.width;
    const src = this.screen.rgba;
    const dst = this.image.data;
    for (const r of rects) {
      for (let row = 0; row < r.h; row++) {
        const s = ((r.y + row) * W + r.x) * 4;
        const e = s + r.w * 4;
        dst.set(src.subarray(s, e), s);
        for (let i = s + 3; i < e; i += 4) dst[i] = 255; // the screen is opaque
      }
      this.ctx.putImageData(this.image, 0, 0, r.x, r.y, r.w, r.h);
    }
  }

  /** Room for the phone's screen in phone-first layout, in CSS pixels: the stage beside or above the bar. */
  room() {
    const { ui } = this;
    const bar = ui.bar ? ui.bar.getBoundingClientRect() : { width: 0, height: 0 };
    const landscape = window.innerWidth > window.innerHeight;
    return {
      width: Math.max(80, ui.stage.clientWidth - (landscape ? bar.width : 0)),
      height: Math.max(80, ui.stage.clientHeight - (landscape ? 0 : bar.height)),
    };
  }

  /**
   * The display the phone's screen should follow (docs/PROTOCOL.md `Display`): phone first, the room the screen has
   * at this device's pixel ratio, so the phone lays out for it and its pixels map to the device's; on a desktop
   * none (the phone keeps its shape and the page scales it).
   */
  wanted() {
    if (!document.body.classList.contains('phone-first')) return null;
    const { width, height } = this.room();
    const side = (v) => Math.min(4096, Math.max(64, Math.floor(v)));
    const density = Math.min(1000, Math.max(50, Math.round((window.devicePixelRatio || 1) * 100)));
    return { width: side(width), height: side(height), density };
  }

  /** Scales the canvas to the stage. */
  fit() {
    const { canvas, ui, vmi } = this;
    const w = vmi.width || 720;
    const h = vmi.height || 1280;
    const phoneFirst = document.body.classList.contains('phone-first');
    let scale;
    if (phoneFirst) {
      // The screen is the terminal: as large as the viewport allows beside the bar, at any scale (the bar is
      // below it in portrait, beside it in landscape).
      const room = this.room();
      scale = Math.min(room.width / w, room.height / h);
    } else {
      const bezel = ui.phone.offsetWidth - canvas.offsetWidth;
      const bezelV = ui.phone.offsetHeight - canvas.offsetHeight;
      const availW = Math.max(80, ui.stage.clientWidth - 24 - bezel);
      const availH = Math.max(80, ui.stage.clientHeight - 24 - bezelV);
      scale = Math.min(availW / w, availH / h);
    }
    const dpr = window.devicePixelRatio || 1;
    // crisp on a desktop: when enlarging, snap to a whole number of device pixels per phone pixel (phone first,
    // the viewport decides: smoothed)
    if (!phoneFirst && scale * dpr >= 1) {
      scale = Math.floor(scale * dpr + 1e-6) / dpr;
      canvas.style.imageRendering = 'pixelated';
    } else {
      canvas.style.imageRendering = 'auto';
    }
    canvas.style.width = `${Math.round(w * scale * 100) / 100}px`;
    canvas.style.height = `${Math.round(h * scale * 100) / 100}px`;
    if (this.onFit) this.onFit();
  }
}
