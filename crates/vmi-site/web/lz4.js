// LZ4 block decompression (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md),
// for the Lz4 tiles of docs/PROTOCOL.md. Pure: no DOM.

import { ProtocolError } from './protocol-error.js';

function lz4Error(detail) {
  return new ProtocolError('BadValue', `lz4: ${detail}`);
}

/**
 * Decompresses one LZ4 block `src` into `dst[start, start + len)`, which it must fill
 * exactly. Never reads or writes outside those ranges; throws ProtocolError on any
 * malformed or wrong-sized block.
 */
export function lz4DecodeBlock(src, dst, start = 0, len = dst.length - start) {
  const n = src.length;
  const end = start + len;
  let i = 0;
  let o = start;
  for (;;) {
    if (i >= n) throw lz4Error('block ends before its last literals');
    const token = src[i++];
    let lit = token >>> 4;
    if (lit === 15) {
      let b;
      do {
        if (i >= n) throw lz4Error('truncated literal length');
        b = src[i++];
        lit += b;
      } while (b === 255);
    }
    if (lit > n - i) throw lz4Error('literals run past the block');
    if (lit > end - o) throw lz4Error(`output larger than ${len} bytes`);
    if (lit < 32) {
      for (let k = 0; k < lit; k++) dst[o + k] = src[i + k];
    } else {
      dst.set(src.subarray(i, i + lit), o);
    }
    i += lit;
    o += lit;
    if (i === n) break; // the last sequence has literals only
    if (n - i < 2) throw lz4Error('truncated match offset');
    const off = src[i] | (src[i + 1] << 8);
    i += 2;
    if (off === 0 || off > o - start) throw lz4Error(`bad match offset ${off}`);
    let ml = token & 15;
    if (ml === 15) {
      let b;
      do {
        if (i >= n) throw lz4Error('truncated match length');
        b = src[i++];
        ml += b;
      } while (b === 255);
    }
    ml += 4;
    if (ml > end - o) throw lz4Error(`output larger than ${len} bytes`);
    let m = o - off;
    if (off >= ml && ml >= 32) {
      dst.copyWithin(o, m, m + ml);
      o += ml;
    } else {
      // overlapping (off < ml) copies repeat the last `off` bytes: byte by byte
      const stop = o + ml;
      while (o < stop) dst[o++] = dst[m++];
    }
  }
  if (o !== end) throw lz4Error(`decompressed to ${o - start} bytes, expected ${len}`);
}
