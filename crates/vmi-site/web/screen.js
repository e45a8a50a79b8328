// The screen: an RGBA8 framebuffer that FrameUpdate tiles are applied to, and its
// 64-bit hash (PROTOCOL.md "Screen hash") that a Resume carries. Pure: no DOM.

import { lz4DecodeBlock } from './lz4.js';
import { ProtocolError } from './protocol-error.js';

// ---------------------------------------------------------------------------------
// Screen hash (PROTOCOL.md "Screen hash")
// ---------------------------------------------------------------------------------

/** The 64-bit screen hash of `bytes` as [lo, hi] (two unsigned 32-bit numbers). */
export function screenHashParts(bytes) {
  let lo = 0x811c9dc5;
  let hi = 0x9e3779b9;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    lo = Math.imul(lo ^ b, 0x01000193);
    hi = Math.imul(hi ^ b, 0x5bd1e995);
  }
  return [lo >>> 0, hi >>> 0];
}

/** [lo, hi] as 16 lowercase hex digits of the u64 (hi first): Rust's `format!("{:016x}")`. */
export function hashHex([lo, hi]) {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

// ---------------------------------------------------------------------------------
// The screen: an RGBA8 framebuffer that FrameUpdate tiles are applied to
// ---------------------------------------------------------------------------------

export class Screen {
  constructor(width, height) {
    this.width = width;
    this.height = height;
    this.rgba = new Uint8Array(width * height * 4); // starts all zero, like the site's
    this.scratch = new Uint8Array(0);
    this.color = new Uint8Array(4);
    this.colorWord = new Uint32Array(this.color.buffer);
  }

  /**
   * Applies one update's tiles in order (a copy reads the screen as the tiles before it left
   * it). Every tile's rectangle is checked before any is painted. Returns the rectangles
   * painted, [{x, y, w, h}]. Throws ProtocolError.
   */
  apply(tiles) {
    const W = this.width;
    const H = this.height;
    for (let i = 0; i < tiles.length; i++) {
      const t = tiles[i];
      if (t.x + t.w > W || t.y + t.h > H) {
        throw new ProtocolError('BadValue', `tile ${i} (${t.x},${t.y} ${t.w}x${t.h}) off the ${W}x${H} screen`);
      }
      if (t.kind === 'copy' && (t.sx + t.w > W || t.sy + t.h > H)) {
        throw new ProtocolError('BadValue', `copy ${i} from (${t.sx},${t.sy} ${t.w}x${t.h}) off the ${W}x${H} screen`);
      }
    }
    const px = this.rgba;
    const rows = new Uint32Array(px.buffer, px.byteOffset, W * H);
    for (const t of tiles) {
      const rowBytes = t.w * 4;
      if (t.kind === 'copy') {
        if (t.sx === 0 && t.x === 0 && t.w === W) {
          // full-width rows are contiguous: one move (copyWithin reads before it writes)
          px.copyWithin(t.y * W * 4, t.sy * W * 4, (t.sy + t.h) * W * 4);
          continue;
        }
        // row by row, in the order that reads each source row before it is overwritten
        for (let k = 0; k < t.h; k++) {
          const r = t.sy >= t.y ? k : t.h - 1 - k;
          const s = ((t.sy + r) * W + t.sx) * 4;
          px.copyWithin(((t.y + r) * W + t.x) * 4, s, s + rowBytes);
        }
        continue;
      }
      if (t.kind === 'solid') {
        this.color[0] = t.r;
        this.color[1] = t.g;
        this.color[2] = t.b;
        this.color[3] = t.a;
        const word = this.colorWord[0];
        for (let r = 0; r < t.h; r++) {
          const s = (t.y + r) * W + t.x;
          rows.fill(word, s, s + t.w);
        }
        continue;
      }
      let src;
      if (t.kind === 'raw') {
        src = t.data;
      } else {
        const n = rowBytes * t.h;
        if (t.x === 0 && t.w === W) {
          // full-width tile: its rows are contiguous in the screen; decode in place
          lz4DecodeBlock(t.data, px, t.y * W * 4, n);
          continue;
        }
        if (this.scratch.length < n) this.scratch = new Uint8Array(n);
        lz4DecodeBlock(t.data, this.scratch, 0, n);
        src = this.scratch;
      }
      for (let r = 0; r < t.h; r++) {
        px.set(src.subarray(r * rowBytes, (r + 1) * rowBytes), ((t.y + r) * W + t.x) * 4);
      }
    }
    return tiles.map((t) => ({ x: t.x, y: t.y, w: t.w, h: t.h }));
  }

  hash() {
    return screenHashParts(this.rgba);
  }
}
