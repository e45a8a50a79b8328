// A checked-out phone running in this tab (docs/OFFLINE.md). The browser's WebAssembly engine runs the phone's
// image; `offline-phone.wasm` (crates/vmi-browser-phone: the sites' own Rust, compiled for the page) does the rest:
// it checks the checkout, instruments the image, holds the host state behind the guest's `vmi` imports, and reads and
// writes the sites' snapshot format. This file only moves bytes between the two instances and the page.

/** The image's `vmi` imports (docs/GUEST_ABI.md): each is the module's `vmi_<name>`. */
const IMPORTS = [
  'clock_monotonic_ns', 'clock_wall_ns', 'timer_set', 'timer_cancel', 'random_fill', 'log', 'fb_attach', 'fb_damage',
  'notify', 'mailbox_fetch', 'kv_get', 'kv_set', 'kv_delete', 'clipboard_set',
];
/** Most timers fired in one go, as on a site: a guest re-arming a timer in the past cannot hold the page. */
const MAX_TIMERS_AT_ONCE = 1024;
const WASM_PAGE = 65536;
const text = new TextDecoder();

/** The guest trapped in a host call: the host's reason. */
class GuestTrap extends Error {}

/** Integer or float bits of a WebAssembly global's value, as a BigInt (the module's i64). */
function globalBits(kind, value) {
  const view = new DataView(new ArrayBuffer(8));
  switch (kind) {
    case 0: return BigInt(value);
    case 1: return value;
    case 2: view.setFloat32(0, value, true); return BigInt(view.getUint32(0, true));
    default: view.setFloat64(0, value, true); return view.getBigInt64(0, true);
  }
}

/** A global's value from its bits (see `globalBits`). */
function globalValue(kind, bits) {
  const view = new DataView(new ArrayBuffer(8));
  switch (kind) {
    case 0: return Number(BigInt.asIntN(32, bits));
    case 1: return BigInt.asIntN(64, bits);
    case 2: view.setUint32(0, Number(BigInt.asUintN(32, bits)), true); return view.getFloat32(0, true);
    default: view.setBigInt64(0, BigInt.asIntN(64, bits), true); return view.getFloat64(0, true);
  }
}

export class PagePhone {
  /**
   * Opens a checkout `bundle` (bytes) with the module's `moduleBytes` and brings the phone back from the base, or
   * from `saved` (what `save()` returned before a reload). Throws an Error naming what was wrong.
   */
  static async start({ bundle, saved, moduleBytes }) {
    const phone = new PagePhone();
    await phone.load(moduleBytes);
    phone.put(bundle);
    phone.call('open');
    const instrumented = phone.output();
    phone.call('lease');
    phone.lease = JSON.parse(text.decode(phone.output()));
    await phone.instantiate(instrumented);
    phone.restore(saved);
    return phone;
  }

  async load(moduleBytes) {
    const env = {
      guest_size: () => (this.guest ? this.guestMemory.buffer.byteLength : 0),
      guest_read: (at, len, dst) => this.bytes(dst, len).set(new Uint8Array(this.guestMemory.buffer, at, len)),
      guest_write: (at, src, len) => new Uint8Array(this.guestMemory.buffer, at, len).set(this.bytes(src, len)),
      wall_ms: () => Date.now(),
      monotonic_ms: () => performance.now(),
    };
    const { instance } = await WebAssembly.instantiate(moduleBytes, { env });
    this.host = instance.exports;
    this.crashed = null; // why the phone stopped, once it has
  }

  /** `len` bytes of the module's memory at `ptr` (a fresh view: the memory may have grown). */
  bytes(ptr, len) {
    return new Uint8Array(this.host.memory.buffer, ptr, len);
  }

  put(data) {
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data || 0);
    const ptr = this.host.input_buffer(bytes.length);
    this.bytes(ptr, bytes.length).set(bytes);
  }

  /** A copy of the last call's output. */
  output() {
    return this.bytes(this.host.output_ptr(), this.host.output_len()).slice();
  }

  call(name, ...args) {
    const r = this.host[name](...args);
    if (r < 0) throw new Error(text.decode(this.output()));
    return r;
  }

  async instantiate(instrumented) {
    const vmi = {};
    for (const name of IMPORTS) {
      const f = this.host[`vmi_${name}`];
      vmi[name] = (...args) => {
        const r = f(...args);
        if (this.host.take_trap()) throw new GuestTrap(text.decode(this.output()));
        return r;
      };
    }
    const { instance } = await WebAssembly.instantiate(instrumented, { vmi });
    this.guest = instance.exports;
    this.guestMemory = instance.exports.memory;
    const version = typeof this.guest.vmi_abi_version === 'function' ? this.guest.vmi_abi_version() : 1;
    this.call('set_abi_version', version);
    this.globals = [];
    for (let i = 0; i < this.host.global_count(); i++) {
      const kind = this.host.global_kind(i);
      this.globals.push({ kind, global: this.guest[text.decode(this.output())] });
    }
  }

  restore(saved) {
    this.put(saved || new Uint8Array(0));
    this.call('restore');
    const ptr = this.host.output_ptr();
    const len = this.host.output_len();
    const have = this.guestMemory.buffer.byteLength;
    if (len > have) this.guestMemory.grow((len - have) / WASM_PAGE);
    new Uint8Array(this.guestMemory.buffer).set(this.bytes(ptr, len));
    this.globals.forEach((g, i) => {
      g.global.value = globalValue(g.kind, this.host.global_bits(i));
    });
  }

  /** The phone's state now as one snapshot against the checkout base (bytes), for the browser's storage. */
  save() {
    const memory = new Uint8Array(this.guestMemory.buffer);
    this.put(memory);
    this.globals.forEach((g, i) => this.call('set_global', i, globalBits(g.kind, g.global.value)));
    this.call('save');
    return this.output();
  }

  /** The checkin body for `saved` (null: the phone as it left). */
  checkin(saved) {
    this.put(saved || new Uint8Array(0));
    this.call('checkin');
    return this.output();
  }

  /** Gives the phone one terminal message (bytes as for a site: Input, Display, Sleep, Wake). */
  message(bytes) {
    this.put(bytes);
    if (this.call('message') === 1) this.deliver();
  }

  /** Fires the timers due; returns the milliseconds until the next one (or -1). */
  fireTimers() {
    for (let i = 0; i < MAX_TIMERS_AT_ONCE && !this.crashed && this.host.due_timer() === 1; i++) this.deliver();
    return this.host.next_timer_ms();
  }

  deliver() {
    if (this.crashed) return;
    const h = this.host;
    try {
      this.guest.vmi_event(h.event(0), h.event(1), h.event(2), h.event(3));
    } catch (e) {
      this.crashed = e instanceof GuestTrap || e instanceof WebAssembly.RuntimeError ? e.message : String(e);
    }
  }

  /**
   * What changed on the screen since the last call: `{width, height, rects, pixels(rect) → rows}` or null. `copyTo`
   * copies the changed rectangles into an RGBA buffer of the screen's size.
   */
  frame() {
    const n = this.host.frame();
    if (n < 0) return null;
    const words = new Uint32Array(this.output().buffer);
    const [ptr, width, height] = words;
    const rects = [];
    for (let i = 0; i < n; i++) {
      const o = 3 + i * 4;
      rects.push({ x: words[o], y: words[o + 1], w: words[o + 2], h: words[o + 3] });
    }
    const memory = this.guestMemory.buffer;
    const copyTo = (rgba) => {
      for (const r of rects) {
        for (let row = 0; row < r.h; row++) {
          const s = ((r.y + row) * width + r.x) * 4;
          rgba.set(new Uint8Array(memory, ptr + s, r.w * 4), s);
        }
      }
    };
    return { width, height, rects, copyTo };
  }

  /** `{notifications, clipboard, logs}` the phone put out since the last call. */
  outputs() {
    this.call('outputs');
    return JSON.parse(text.decode(this.output()));
  }
}
