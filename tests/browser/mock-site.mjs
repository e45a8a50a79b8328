#!/usr/bin/env node
// A stand-in site for developing the browser terminal without the Rust daemon: serves
// crates/vmi-site/web/ and speaks docs/PROTOCOL.md over a hand-rolled WebSocket (node
// only, no dependencies), with a fake 720x1280 phone (home screen with Mail at
// (102,1090) and Notes at (274,1090), a Notes app that shows typed characters as
// blocks, an inbox). Its encoder is independent of the terminal's codec.js (own LZ4 compressor).
//
//   node tests/browser/mock-site.mjs [--port 0] [--token tok-alice]
// prints {"url": "http://127.0.0.1:PORT/#token=…", "mail_url": …} and serves until killed.
// Extra endpoints: GET /v1/phones/alice/screen-hash, POST /mock/redirect[?welcome_after_ms=N] (sends every
// terminal a Redirect to this same site, whose next Welcome then comes N ms after its Hello), POST /mock/redirect-next-hello (answers the next
// Hello with a Redirect instead of Welcome), POST /mock/stall (inputs are lost from now on),
// POST /mock/drop (ends the stall and closes every WebSocket), POST /mock/down and /mock/up (the site
// unreachable: every WebSocket closed and new ones refused, until up).
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: { port: { type: 'string', default: '0' }, token: { type: 'string', default: 'tok-alice' } },
});
const webDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'crates', 'vmi-site', 'web');
const W = 720;
const H = 1280;
const TILE = 64;

// ---- the fake phone -----------------------------------------------------------------

const fb = new Uint8Array(W * H * 4);
const phone = { app: 'home', text: '', mails: [], lastInput: 0 };

function rect(x, y, w, h, [r, g, b]) {
  for (let yy = Math.max(0, y); yy < Math.min(H, y + h); yy++) {
    for (let xx = Math.max(0, x); xx < Math.min(W, x + w); xx++) {
      const o = (yy * W + xx) * 4;
      fb[o] = r;
      fb[o + 1] = g;
      fb[o + 2] = b;
      fb[o + 3] = 255;
    }
  }
}

function glyph(x, y, ch) {
  const c = ch.codePointAt(0);
  rect(x, y, 26, 34, [250, 250, 250]);
  if (ch === ' ') return;
  // a 4x5 bit pattern from the code point, so different letters look different
  for (let i = 0; i < 20; i++) {
    if ((Math.imul(c, 2654435761) >>> i) & 1 || i === 17) rect(x + 2 + (i % 4) * 6, y + 2 + Math.floor(i / 4) * 6, 5, 5, [30, 30, 40]);
  }
}

function draw() {
  // status bar with an unread badge
  rect(0, 0, W, 48, [20, 22, 30]);
  if (phone.mails.some((m) => !m.read)) rect(W - 60, 12, 24, 24, [230, 70, 70]);
  if (phone.app === 'home') {
    for (let y = 48; y < H; y += 8) rect(0, y, W, 8, [30 + ((y * 40) / H) | 0, 40, 90 + ((y * 60) / H) | 0]);
    rect(102 - 56, 1090 - 56, 112, 112, [60, 130, 240]); // Mail
    rect(274 - 56, 1090 - 56, 112, 112, [250, 200, 60]); // Notes
    rect(446 - 56, 1090 - 56, 112, 112, [90, 200, 120]);
    rect(618 - 56, 1090 - 56, 112, 112, [220, 90, 160]);
  } else if (phone.app === 'notes') {
    rect(0, 48, W, H - 48, [255, 250, 230]);
    rect(0, 48, W, 80, [250, 200, 60]);
    let x = 24;
    let y = 160;
    for (const ch of phone.text) {
      glyph(x, y, ch);
      x += 28;
      if (x > W - 50) {
        x = 24;
        y += 40;
      }
    }
    rect(x, y, 3, 34, [40, 40, 40]); // cursor
  } else if (phone.app === 'mail') {
    rect(0, 48, W, H - 48, [245, 246, 250]);
    rect(0, 48, W, 80, [60, 130, 240]);
    phone.mails.forEach((m, i) => {
      rect(16, 150 + i * 110, W - 32, 96, m.read ? [255, 255, 255] : [225, 235, 255]);
      let x = 32;
      for (const ch of `${m.from} ${m.subject}`.slice(0, 22)) {
        glyph(x, 170 + i * 110, ch);
        x += 28;
      }
    });
    phone.mails.forEach((m) => (m.read = true));
  }
  for (const s of sessions) s.damaged();
}

function input(inp) {
  if (inp.kind === 'touch' && inp.phase === 2) {
    const near = (cx, cy) => Math.abs(inp.x - cx) < 60 && Math.abs(inp.y - cy) < 60;
    if (phone.app === 'home' && near(274, 1090)) phone.app = 'notes';
    else if (phone.app === 'home' && near(102, 1090)) phone.app = 'mail';
  } else if (inp.kind === 'key') {
    if (inp.code === 8 || inp.code === 3) phone.app = 'home';
    else if (phone.app === 'notes' && inp.code === 0 && inp.text) phone.text += inp.text;
    else if (phone.app === 'notes' && inp.code === 1) phone.text = [...phone.text].slice(0, -1).join('');
  }
  draw();
}

function hashParts(bytes) {
  let lo = 0x811c9dc5;
  let hi = 0x9e3779b9;
  for (let i = 0; i < bytes.length; i++) {
    lo = Math.imul(lo ^ bytes[i], 0x01000193);
    hi = Math.imul(hi ^ bytes[i], 0x5bd1e995);
  }
  return [lo >>> 0, hi >>> 0];
}
const hashHex = ([lo, hi]) => hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');

// ---- LZ4 block compression (greedy, hash of 4 bytes) -----------------------------------

function lz4Compress(src) {
  const n = src.length;
  const out = [];
  const table = new Int32Array(1 << 14).fill(-1);
  const read32 = (p) => src[p] | (src[p + 1] << 8) | (src[p + 2] << 16) | (src[p + 3] << 24);
  const len = (x) => {
    while (x >= 255) {
      out.push(255);
      x -= 255;
    }
    out.push(x);
  };
  const emit = (anchor, end, off, ml) => {
    const lit = end - anchor;
    out.push((Math.min(lit, 15) << 4) | (off ? Math.min(ml - 4, 15) : 0));
    if (lit >= 15) len(lit - 15);
    for (let k = anchor; k < end; k++) out.push(src[k]);
    if (!off) return;
    out.push(off & 255, off >> 8);
    if (ml - 4 >= 15) len(ml - 4 - 15);
  };
  let anchor = 0;
  let i = 0;
  const limit = n - 12;
  while (i < limit) {
    const seq = read32(i);
    const h = Math.imul(seq, 2654435761) >>> 18;
    const ref = table[h];
    table[h] = i;
    if (ref >= 0 && i - ref < 65536 && read32(ref) === seq) {
      let ml = 4;
      while (i + ml < n - 5 && src[ref + ml] === src[i + ml]) ml++;
      emit(anchor, i, i - ref, ml);
      i += ml;
      anchor = i;
    } else {
      i++;
    }
  }
  emit(anchor, n, 0, 0);
  return Uint8Array.from(out);
}

// ---- wire ------------------------------------------------------------------------------

class Out {
  constructor() {
    this.a = [];
  }
  u8(x) {
    this.a.push(x & 255);
    return this;
  }
  u16(x) {
    return this.u8(x).u8(x >>> 8);
  }
  u32(x) {
    return this.u16(x & 0xffff).u16(x >>> 16);
  }
  u64(x) {
    return this.u32(x % 2 ** 32).u32(Math.floor(x / 2 ** 32));
  }
  str(s) {
    const b = Buffer.from(s, 'utf8');
    this.u16(b.length);
    for (const x of b) this.a.push(x);
    return this;
  }
  bytes(b) {
    for (const x of b) this.a.push(x);
    return this;
  }
  done() {
    return Buffer.from(this.a);
  }
}

function decodeClient(b) {
  let p = 0;
  const need = (n) => {
    if (p + n > b.length) throw new Error('Truncated');
  };
  const u8 = () => (need(1), b[p++]);
  const u16 = () => (need(2), (p += 2), b.readUInt16LE(p - 2));
  const u32 = () => (need(4), (p += 4), b.readUInt32LE(p - 4));
  const u64 = () => {
    const lo = u32();
    return u32() * 2 ** 32 + lo;
  };
  const tag = u8();
  let m;
  if (tag === 1) {
    const version = u16();
    const tl = u16();
    need(tl);
    const token = b.subarray(p, p + tl).toString('utf8');
    p += tl;
    const resume = u8() ? { last_frame_seq: u64(), hash: [u32(), u32()] } : null;
    const asleep = u8() === 1;
    // Version 3: the display the phone follows.
    const display = version >= 3 && u8() ? { width: u16(), height: u16(), density: u16() } : null;
    m = { type: 'Hello', version, token, resume, asleep, display };
  } else if (tag === 2) {
    const seq = u64();
    const kind = u8();
    if (kind === 0 || kind === 2) {
      const input = { kind: 'touch', phase: u8(), x: u16(), y: u16(), pointer: 0 };
      if (kind === 2) input.pointer = u8();
      m = { type: 'Input', seq, input };
    } else {
      const code = u8();
      const text = u8() ? String.fromCodePoint(u32()) : null;
      m = { type: 'Input', seq, input: { kind: 'key', code, text } };
    }
  } else if (tag === 3) m = { type: 'FrameAck', seq: u64() };
  else if (tag === 4) m = { type: 'Sleep' };
  else if (tag === 5) m = { type: 'Wake' };
  else if (tag === 6) m = { type: 'Ping', nonce: u64() };
  else if (tag === 7) m = { type: 'Display', display: { width: u16(), height: u16(), density: u16() } };
  else throw new Error(`UnknownType ${tag}`);
  if (p !== b.length) throw new Error('TrailingBytes');
  return m;
}

// ---- WebSocket (RFC 6455, server side, enough for one browser) ---------------------------

function wsAccept(req, socket, onMessage, onClose) {
  const key = req.headers['sec-websocket-key'];
  const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  socket.setNoDelay(true);
  let buf = Buffer.alloc(0);
  let closed = false;
  const frame = (op, payload) => {
    if (closed) return;
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x80 | op, n]) : n < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
    if (n >= 126 && n < 65536) {
      head[0] = 0x80 | op;
      head[1] = 126;
      head.writeUInt16BE(n, 2);
    } else if (n >= 65536) {
      head[0] = 0x80 | op;
      head[1] = 127;
      head.writeBigUInt64BE(BigInt(n), 2);
    }
    socket.write(Buffer.concat([head, payload]));
  };
  const conn = {
    send: (payload) => frame(2, payload),
    // the close code says why (docs/PROTOCOL.md "Closing"): 1000 unless given
    close: (code = 1000) => {
      frame(8, Buffer.from([code >> 8, code & 255]));
      closed = true;
      socket.end();
    },
  };
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) return;
      const op = buf[0] & 15;
      let n = buf[1] & 127;
      let p = 2;
      if (n === 126) {
        if (buf.length < 4) return;
        n = buf.readUInt16BE(2);
        p = 4;
      } else if (n === 127) {
        if (buf.length < 10) return;
        n = Number(buf.readBigUInt64BE(2));
        p = 10;
      }
      if (buf.length < p + 4 + n) return;
      const mask = buf.subarray(p, p + 4);
      const payload = Buffer.from(buf.subarray(p + 4, p + 4 + n));
      for (let i = 0; i < n; i++) payload[i] ^= mask[i & 3];
      buf = buf.subarray(p + 4 + n);
      if (op === 2) onMessage(payload);
      else if (op === 8) {
        conn.close();
        return;
      } else if (op === 9) frame(10, payload);
      else if (op === 1) conn.close();
    }
  });
  socket.on('close', () => {
    closed = true;
    onClose();
  });
  socket.on('error', () => {});
  return conn;
}

// ---- sessions ----------------------------------------------------------------------------

const sessions = new Set();
const stats = { frames: 0, frameBytes: 0, lz4: 0, solid: 0, raw: 0, sessions: 0, helloRedirects: 0, silentRefusals: 0, pings: 0, inputs: 0, helloResumes: [] };
let redirectNextHello = false; // POST /mock/redirect-next-hello
let down = false; // POST /mock/down: every terminal connection refused until POST /mock/up
let welcomeAfterMs = 0; // POST /mock/redirect?welcome_after_ms=N: the next Welcome comes N ms after its Hello
let stall = false; // POST /mock/stall: inputs are lost in flight until /mock/drop

function tilesFor(sent, full) {
  const tiles = [];
  for (let ty = 0; ty < H; ty += TILE) {
    for (let tx = 0; tx < W; tx += TILE) {
      const w = Math.min(TILE, W - tx);
      const h = Math.min(TILE, H - ty);
      const px = new Uint8Array(w * h * 4);
      let same = true;
      for (let r = 0; r < h; r++) {
        const s = ((ty + r) * W + tx) * 4;
        px.set(fb.subarray(s, s + w * 4), r * w * 4);
        if (same && Buffer.compare(fb.subarray(s, s + w * 4), sent.subarray(s, s + w * 4)) !== 0) same = false;
      }
      if (same && !full) continue;
      for (let r = 0; r < h; r++) {
        const s = ((ty + r) * W + tx) * 4;
        sent.set(fb.subarray(s, s + w * 4), s);
      }
      const o = new Out().u16(tx).u16(ty).u16(w).u16(h);
      let uniform = true;
      for (let i = 4; i < px.length && uniform; i++) if (px[i] !== px[i & 3]) uniform = false;
      if (uniform) {
        o.u8(0).bytes(px.subarray(0, 4));
        stats.solid++;
      } else {
        const z = lz4Compress(px);
        if (z.length < px.length) {
          o.u8(1).u32(z.length).bytes(z);
          stats.lz4++;
        } else {
          o.u8(2).u32(px.length).bytes(px);
          stats.raw++;
        }
      }
      tiles.push(o.done());
    }
  }
  return tiles;
}

class Session {
  constructor(conn, hello) {
    this.conn = conn;
    this.asleep = hello.asleep;
    this.sent = new Uint8Array(W * H * 4);
    this.seq = hello.resume ? hello.resume.last_frame_seq : 0;
    this.acked = this.seq;
    const resumed = !!hello.resume && hashHex(hello.resume.hash) === hashHex(hashParts(fb));
    if (resumed) this.sent.set(fb);
    this.needFull = !resumed;
    this.pendingWake = false;
    stats.helloResumes.push({ resume: hello.resume ? hello.resume.last_frame_seq : null, resumed });
    conn.send(new Out().u8(0x81).u16(1).u16(W).u16(H).u64(phone.lastInput).u8(resumed ? 1 : 0).done());
    this.flush();
  }
  damaged() {
    this.flush();
  }
  flush() {
    if (this.asleep) return;
    if (this.seq - this.acked >= 2) return; // at most 2 un-acked; coalesced until an ack
    const tiles = tilesFor(this.sent, this.needFull);
    if (!tiles.length && !this.pendingWake) return;
    this.needFull = false;
    this.pendingWake = false;
    this.seq++;
    const msg = new Out().u8(0x82).u64(this.seq).u32(tiles.length);
    const body = Buffer.concat([msg.done(), ...tiles]);
    stats.frames++;
    stats.frameBytes += body.length;
    this.conn.send(body);
  }
  message(m) {
    if (m.type === 'Input') {
      if (stall) return;
      stats.inputs++;
      if (m.seq > phone.lastInput) {
        phone.lastInput = m.seq;
        input(m.input);
      }
      this.conn.send(new Out().u8(0x83).u64(phone.lastInput).done());
    } else if (m.type === 'FrameAck') {
      this.acked = Math.max(this.acked, m.seq);
      this.flush();
    } else if (m.type === 'Sleep') {
      this.asleep = true;
    } else if (m.type === 'Wake') {
      this.asleep = false;
      this.pendingWake = true;
      this.flush();
    } else if (m.type === 'Ping') {
      stats.pings++;
      this.conn.send(new Out().u8(0x86).u64(m.nonce).done());
    } else {
      throw new Error(`unexpected ${m.type}`);
    }
  }
}

function terminal(req, socket) {
  let session = null;
  const conn = wsAccept(
    req,
    socket,
    (payload) => {
      let m;
      try {
        m = decodeClient(payload);
      } catch (e) {
        conn.send(new Out().u8(0x87).u8(3).str(String(e.message)).done());
        conn.close();
        return;
      }
      if (!session) {
        if (m.type !== 'Hello') {
          conn.send(new Out().u8(0x87).u8(3).str('expected Hello').done());
          conn.close();
        } else if (redirectNextHello) {
          // the phone is elsewhere: answer Hello with a Redirect (no Welcome)
          redirectNextHello = false;
          stats.helloRedirects++;
          conn.send(new Out().u8(0x85).str(`ws://127.0.0.1:${server.address().port}/v1/terminal`).done());
          conn.close();
        } else if (m.token === 'silent-refusal') {
          // a refusal whose Error message was lost: only the close code says Unauthorized
          stats.silentRefusals++;
          conn.close(4001);
        } else if (m.token !== opts.token) {
          conn.send(new Out().u8(0x87).u8(1).str('unknown or revoked device token').done());
          conn.close(4001);
        } else if (welcomeAfterMs > 0) {
          // a slow new site: the terminal waits for its Welcome (nothing is sent before it)
          const after = welcomeAfterMs;
          welcomeAfterMs = 0;
          stats.sessions++;
          setTimeout(() => {
            session = new Session(conn, m);
            sessions.add(session);
          }, after);
        } else {
          stats.sessions++;
          session = new Session(conn, m);
          sessions.add(session);
        }
        return;
      }
      session.message(m);
    },
    () => session && sessions.delete(session),
  );
}

// ---- HTTP --------------------------------------------------------------------------------

// The page and its ES modules, as the site serves them (web/package.json is for node only).
const TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
const WEB_FILES = new Set(readdirSync(webDir).filter((f) => TYPES[extname(f).slice(1)]));
const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const file = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
  if (req.method === 'GET' && WEB_FILES.has(file)) {
    res.writeHead(200, { 'content-type': TYPES[extname(file).slice(1)] });
    res.end(readFileSync(join(webDir, file)));
    return;
  }
  const json = (code, obj) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(obj));
  };
  if (req.method === 'POST' && url.pathname === '/v1/phones/alice/mail') {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const m = JSON.parse(body);
      phone.mails.unshift({ from: m.from, subject: m.subject, body: m.body, read: false });
      draw(); // the status bar badge changes: a sleeping terminal must still get no frame
      const note = new Out().u8(0x84).str(m.from).str(m.subject).u64(Date.now()).done();
      for (const s of sessions) s.conn.send(note);
      json(202, {});
    });
    return;
  }
  if (req.method === 'GET' && url.pathname === '/v1/phones/alice/screen-hash') {
    json(200, { width: W, height: H, hash: hashHex(hashParts(fb)), app: phone.app, text: phone.text, stats });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/redirect') {
    welcomeAfterMs = Number(url.searchParams.get('welcome_after_ms') || 0);
    const port = server.address().port;
    for (const s of sessions) {
      s.conn.send(new Out().u8(0x85).str(`ws://127.0.0.1:${port}/v1/terminal`).done());
      s.conn.close();
    }
    json(200, { redirected: sessions.size });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/redirect-next-hello') {
    redirectNextHello = true;
    json(200, {});
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/down') {
    down = true;
    for (const s of sessions) s.conn.close();
    json(200, {});
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/up') {
    down = false;
    json(200, {});
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/stall') {
    stall = true;
    json(200, {});
    return;
  }
  if (req.method === 'POST' && url.pathname === '/mock/drop') {
    stall = false;
    for (const s of sessions) s.conn.close();
    json(200, {});
    return;
  }
  json(404, { error: 'not found' });
});
server.on('upgrade', (req, socket) => {
  if (down || new URL(req.url, 'http://x').pathname !== '/v1/terminal') {
    socket.destroy();
    return;
  }
  terminal(req, socket);
});

draw();
server.listen(Number(opts.port), '127.0.0.1', () => {
  const port = server.address().port;
  console.log(
    JSON.stringify({
      url: `http://127.0.0.1:${port}/#token=${opts.token}`,
      mail_url: `http://127.0.0.1:${port}/v1/phones/alice/mail`,
      hash_url: `http://127.0.0.1:${port}/v1/phones/alice/screen-hash`,
    }),
  );
});
