//! Host-side state of one phone and the `vmi` import module (docs/GUEST_ABI.md).
//!
//! Everything the guest can observe besides its own memory lives in [`Host`]: the
//! virtual clock, timers, RNG, mailbox, undelivered notifications, the persistent
//! key-value store and the framebuffer's place. [`Host::save`] and [`Host::load`] turn
//! it into the snapshot's host-state blob, so a restored phone continues exactly.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use vmi_engine::{Clock, Mail, Notification, Rect, VirtualClock};
use wasmparser::ValType;
use wasmtime::{Caller, Linker, Memory};

use crate::WasmEngineError;
use crate::persist::{Reader, Writer};

/// Most timers a guest may arm.
pub const MAX_TIMERS: usize = 64;
/// Most notifications waiting for a terminal.
pub const MAX_NOTIFICATIONS: usize = 256;
/// Longest notification title or body, in bytes.
pub const MAX_NOTIFICATION_FIELD: usize = 1024;
/// Most mails waiting in the mailbox.
pub const MAX_MAILBOX: usize = 10_000;
/// Longest mail sender or subject, in bytes.
pub const MAX_MAIL_FIELD: usize = 1024;
/// Longest mail body, in bytes.
pub const MAX_MAIL_BODY: usize = 256 << 10;
/// Most bytes waiting in the mailbox: the host state must stay well inside what a
/// snapshot may carry, or the phone could not be restored.
pub const MAX_MAILBOX_BYTES: usize = 16 << 20;
/// Longest key in the key-value store.
pub const MAX_KV_KEY: usize = 256;
/// Largest value in the key-value store.
pub const MAX_KV_VALUE: usize = 1 << 20;
/// Largest key-value store.
pub const MAX_KV_TOTAL: usize = 8 << 20;
/// Longest log line.
pub const MAX_LOG: usize = 4096;
/// Most damage rectangles kept between frame reads before they are merged.
const MAX_DAMAGE: usize = 32;

const I32: ValType = ValType::I32;
const I64: ValType = ValType::I64;

/// The ABI's host functions: name, parameters, results. The load-time check and the
/// linker both read this table, so they cannot disagree.
pub const HOST_FUNCTIONS: &[(&str, &[ValType], &[ValType])] = &[
    ("clock_monotonic_ns", &[], &[I64]),
    ("clock_wall_ns", &[], &[I64]),
    ("timer_set", &[I32, I64], &[]),
    ("timer_cancel", &[I32], &[]),
    ("random_fill", &[I32, I32], &[]),
    ("log", &[I32, I32, I32], &[]),
    ("fb_attach", &[I32, I32, I32], &[]),
    ("fb_damage", &[I32, I32, I32, I32], &[]),
    ("notify", &[I32, I32, I32, I32], &[I32]),
    ("mailbox_fetch", &[I32, I32], &[I32]),
    ("kv_get", &[I32, I32, I32, I32], &[I32]),
    ("kv_set", &[I32, I32, I32, I32], &[I32]),
    ("kv_delete", &[I32, I32], &[]),
];

/// Where the guest's framebuffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framebuffer {
    /// Offset in linear memory.
    pub ptr: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Host state of one phone (the store's data).
pub struct Host {
    /// The guest's memory, set right after instantiation.
    pub memory: Option<Memory>,
    /// The host clock.
    pub clock: Arc<dyn Clock>,
    /// The phone's virtual clock.
    pub vclock: VirtualClock,
    /// Armed timers: id → deadline (virtual ns).
    pub timers: BTreeMap<u32, u64>,
    /// xorshift64* state.
    pub rng: u64,
    /// Mails not yet fetched.
    pub mailbox: VecDeque<Mail>,
    /// Notifications not yet taken by a terminal.
    pub notifications: VecDeque<Notification>,
    /// Persistent key-value store.
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Bytes in `kv`.
    pub kv_bytes: usize,
    /// The attached framebuffer.
    pub framebuffer: Option<Framebuffer>,
    /// Damage since the last frame read.
    pub damage: Vec<Rect>,
    /// Memory cap in bytes (enforced by [`wasmtime::ResourceLimiter`]).
    pub memory_limit: u64,
    /// Set when the guest hit the memory cap, so the crash reason can say so.
    pub hit_memory_limit: bool,
}

impl Host {
    /// A fresh phone's host state.
    pub fn new(clock: Arc<dyn Clock>, rng_seed: u64, memory_limit: u64) -> Host {
        let vclock = VirtualClock::start(clock.as_ref());
        Host {
            memory: None,
            clock,
            vclock,
            timers: BTreeMap::new(),
            // xorshift must not start at 0.
            rng: rng_seed | 1,
            mailbox: VecDeque::new(),
            notifications: VecDeque::new(),
            kv: BTreeMap::new(),
            kv_bytes: 0,
            framebuffer: None,
            damage: Vec::new(),
            memory_limit,
            hit_memory_limit: false,
        }
    }

    /// Virtual time now.
    pub fn now_ns(&self) -> u64 {
        self.vclock.now_ns(self.clock.as_ref())
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn add_damage(&mut self, x: i32, y: i32, w: i32, h: i32) {
        let Some(fb) = self.framebuffer else { return };
        let clip = |v: i64, max: u32| v.clamp(0, max as i64) as u32;
        let (x0, y0) = (clip(x as i64, fb.width), clip(y as i64, fb.height));
        let (x1, y1) = (clip(x as i64 + w as i64, fb.width), clip(y as i64 + h as i64, fb.height));
        if x1 <= x0 || y1 <= y0 {
            return;
        }
        let rect = Rect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
        if self.damage.iter().any(|d| d.union(&rect) == *d) {
            return;
        }
        self.damage.push(rect);
        if self.damage.len() > MAX_DAMAGE {
            // Too many pieces: one bounding box costs less than a long list.
            let all = self.damage.iter().skip(1).fold(self.damage[0], |a, b| a.union(b));
            self.damage = vec![all];
        }
    }

    /// Serializes the state a snapshot must carry (not the clock: the header has it).
    pub fn save(&self, w: &mut Writer) {
        w.u8(HOST_STATE_VERSION);
        w.u64(self.rng);
        w.u32(self.timers.len() as u32);
        for (id, deadline) in &self.timers {
            w.u32(*id);
            w.u64(*deadline);
        }
        w.u32(self.mailbox.len() as u32);
        for mail in &self.mailbox {
            w.str(&mail.from);
            w.str(&mail.subject);
            w.str(&mail.body);
        }
        w.u32(self.notifications.len() as u32);
        for n in &self.notifications {
            w.str(&n.title);
            w.str(&n.body);
            w.u64(n.at_ns);
        }
        save_kv(&self.kv, w);
        match self.framebuffer {
            Some(fb) => {
                w.u8(1);
                w.u32(fb.ptr);
                w.u32(fb.width);
                w.u32(fb.height);
            }
            None => w.u8(0),
        }
        w.u32(self.damage.len() as u32);
        for d in &self.damage {
            for v in [d.x, d.y, d.w, d.h] {
                w.u32(v);
            }
        }
    }

    /// Restores what [`Host::save`] wrote.
    pub fn load(&mut self, r: &mut Reader<'_>) -> Result<(), WasmEngineError> {
        let version = r.u8()?;
        if version != HOST_STATE_VERSION {
            return Err(WasmEngineError::HostState(format!(
                "host state version {version}, this engine reads {HOST_STATE_VERSION}"
            )));
        }
        // A saved state is never 0 (xorshift never reaches 0 from a non-zero seed);
        // only a forged blob could say 0, and 0 would stick forever.
        self.rng = r.u64()?.max(1);
        let n = r.count(MAX_TIMERS, "timers")?;
        self.timers.clear();
        for _ in 0..n {
            let id = r.u32()?;
            self.timers.insert(id, r.u64()?);
        }
        let n = r.count(MAX_MAILBOX, "mailbox")?;
        self.mailbox.clear();
        for _ in 0..n {
            self.mailbox.push_back(Mail { from: r.string()?, subject: r.string()?, body: r.string()? });
        }
        let n = r.count(MAX_NOTIFICATIONS, "notifications")?;
        self.notifications.clear();
        for _ in 0..n {
            self.notifications.push_back(Notification { title: r.string()?, body: r.string()?, at_ns: r.u64()? });
        }
        self.kv = load_kv(r)?;
        self.kv_bytes = self.kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.framebuffer = match r.u8()? {
            0 => None,
            1 => Some(Framebuffer { ptr: r.u32()?, width: r.u32()?, height: r.u32()? }),
            other => return Err(WasmEngineError::HostState(format!("framebuffer tag {other}"))),
        };
        let n = r.count(MAX_DAMAGE + 1, "damage")?;
        self.damage.clear();
        for _ in 0..n {
            self.damage.push(Rect { x: r.u32()?, y: r.u32()?, w: r.u32()?, h: r.u32()? });
        }
        r.finish()
    }
}

/// Version of the host-state blob inside a snapshot.
pub const HOST_STATE_VERSION: u8 = 1;

fn save_kv(kv: &BTreeMap<Vec<u8>, Vec<u8>>, w: &mut Writer) {
    w.u32(kv.len() as u32);
    for (k, v) in kv {
        w.bytes(k);
        w.bytes(v);
    }
}

fn load_kv(r: &mut Reader<'_>) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, WasmEngineError> {
    let n = r.count(MAX_KV_TOTAL, "key-value entries")?;
    let mut kv = BTreeMap::new();
    for _ in 0..n {
        let k = r.bytes()?.to_vec();
        kv.insert(k, r.bytes()?.to_vec());
    }
    Ok(kv)
}

/// Reads the persistent key-value store out of a snapshot's host-state blob, for
/// carrying a user's data to a new image version.
pub fn kv_of_host_state(blob: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, WasmEngineError> {
    let mut host = Host::new(vmi_engine::SystemClock::shared(), 1, 0);
    host.load(&mut Reader::new(blob))?;
    Ok(host.kv)
}

type HostResult<T> = wasmtime::Result<T>;

fn guest_error(msg: String) -> wasmtime::Error {
    wasmtime::Error::msg(msg)
}

fn memory(caller: &Caller<'_, Host>) -> HostResult<Memory> {
    caller.data().memory.ok_or_else(|| guest_error("host call before the memory was attached".into()))
}

/// Bounds-checked range of guest memory.
fn span(len_total: usize, ptr: i32, len: i32, what: &str) -> HostResult<std::ops::Range<usize>> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    if len < 0 || p.checked_add(l).is_none_or(|end| end > len_total) {
        return Err(guest_error(format!("{what}: pointer {p:#x}+{l} is outside guest memory")));
    }
    Ok(p..p + l)
}

fn read_bytes(caller: &Caller<'_, Host>, ptr: i32, len: i32, max: usize, what: &str) -> HostResult<Vec<u8>> {
    if len as u32 as usize > max {
        return Err(guest_error(format!("{what}: {len} bytes is over the limit of {max}")));
    }
    let mem = memory(caller)?;
    let data = mem.data(caller);
    let range = span(data.len(), ptr, len, what)?;
    Ok(data[range].to_vec())
}

fn write_bytes(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8], what: &str) -> HostResult<()> {
    let mem = memory(caller)?;
    let data = mem.data_mut(caller);
    let range = span(data.len(), ptr, bytes.len() as i32, what)?;
    data[range].copy_from_slice(bytes);
    Ok(())
}

/// Defines the `vmi` import module in a linker.
pub fn link(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap("vmi", "clock_monotonic_ns", |caller: Caller<'_, Host>| caller.data().now_ns() as i64)?;
    linker.func_wrap("vmi", "clock_wall_ns", |caller: Caller<'_, Host>| caller.data().clock.wall_ns() as i64)?;
    linker.func_wrap("vmi", "timer_set", |mut caller: Caller<'_, Host>, id: i32, deadline: i64| -> HostResult<()> {
        let timers = &mut caller.data_mut().timers;
        if timers.len() >= MAX_TIMERS && !timers.contains_key(&(id as u32)) {
            return Err(guest_error(format!("timer_set: more than {MAX_TIMERS} timers")));
        }
        timers.insert(id as u32, deadline.max(0) as u64);
        Ok(())
    })?;
    linker.func_wrap("vmi", "timer_cancel", |mut caller: Caller<'_, Host>, id: i32| {
        caller.data_mut().timers.remove(&(id as u32));
    })?;
    linker.func_wrap("vmi", "random_fill", |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> HostResult<()> {
        let mem = memory(&caller)?;
        let (data, host) = mem.data_and_store_mut(&mut caller);
        let range = span(data.len(), ptr, len, "random_fill")?;
        for chunk in data[range].chunks_mut(8) {
            let r = host.next_random().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        Ok(())
    })?;
    linker.func_wrap("vmi", "log", |caller: Caller<'_, Host>, level: i32, ptr: i32, len: i32| -> HostResult<()> {
        let bytes = read_bytes(&caller, ptr, len.min(MAX_LOG as i32), MAX_LOG, "log")?;
        let line = String::from_utf8_lossy(&bytes);
        match level {
            0 => tracing::error!(target: "guest", "{line}"),
            1 => tracing::warn!(target: "guest", "{line}"),
            2 => tracing::info!(target: "guest", "{line}"),
            3 => tracing::debug!(target: "guest", "{line}"),
            _ => tracing::trace!(target: "guest", "{line}"),
        }
        Ok(())
    })?;
    linker.func_wrap(
        "vmi",
        "fb_attach",
        |mut caller: Caller<'_, Host>, ptr: i32, width: i32, height: i32| -> HostResult<()> {
            if width <= 0 || height <= 0 || width > 8192 || height > 8192 {
                return Err(guest_error(format!("fb_attach: bad size {width}x{height}")));
            }
            let len = memory(&caller)?.data(&caller).len();
            let bytes = (width as usize) * (height as usize) * 4;
            span(len, ptr, bytes as i32, "fb_attach")?;
            let fb = Framebuffer { ptr: ptr as u32, width: width as u32, height: height as u32 };
            let host = caller.data_mut();
            if host.framebuffer != Some(fb) {
                host.framebuffer = Some(fb);
                host.damage = vec![Rect { x: 0, y: 0, w: fb.width, h: fb.height }];
            }
            Ok(())
        },
    )?;
    linker.func_wrap("vmi", "fb_damage", |mut caller: Caller<'_, Host>, x: i32, y: i32, w: i32, h: i32| {
        caller.data_mut().add_damage(x, y, w, h);
    })?;
    linker.func_wrap(
        "vmi",
        "notify",
        |mut caller: Caller<'_, Host>, tp: i32, tl: i32, bp: i32, bl: i32| -> HostResult<i32> {
            let title = read_bytes(&caller, tp, tl, MAX_NOTIFICATION_FIELD, "notify title")?;
            let body = read_bytes(&caller, bp, bl, MAX_NOTIFICATION_FIELD, "notify body")?;
            let host = caller.data_mut();
            if host.notifications.len() >= MAX_NOTIFICATIONS {
                return Ok(-1);
            }
            let at_ns = host.now_ns();
            host.notifications.push_back(Notification {
                title: String::from_utf8_lossy(&title).into_owned(),
                body: String::from_utf8_lossy(&body).into_owned(),
                at_ns,
            });
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "vmi",
        "mailbox_fetch",
        |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> HostResult<i32> {
            let Some(mail) = caller.data().mailbox.front() else { return Ok(0) };
            let record = format!("{}\n{}\n{}", mail.from, mail.subject, mail.body).into_bytes();
            if record.len() > len.max(0) as usize {
                return Ok(-(record.len() as i32));
            }
            write_bytes(&mut caller, ptr, &record, "mailbox_fetch")?;
            caller.data_mut().mailbox.pop_front();
            Ok(record.len() as i32)
        },
    )?;
    linker.func_wrap(
        "vmi",
        "kv_get",
        |mut caller: Caller<'_, Host>, kp: i32, kl: i32, bp: i32, bl: i32| -> HostResult<i32> {
            let key = read_bytes(&caller, kp, kl, MAX_KV_KEY, "kv_get key")?;
            let Some(value) = caller.data().kv.get(&key).cloned() else { return Ok(-1) };
            if value.len() <= bl.max(0) as usize {
                write_bytes(&mut caller, bp, &value, "kv_get buffer")?;
            }
            Ok(value.len() as i32)
        },
    )?;
    linker.func_wrap(
        "vmi",
        "kv_set",
        |mut caller: Caller<'_, Host>, kp: i32, kl: i32, vp: i32, vl: i32| -> HostResult<i32> {
            if kl as u32 as usize > MAX_KV_KEY || vl as u32 as usize > MAX_KV_VALUE {
                return Ok(-1);
            }
            let key = read_bytes(&caller, kp, kl, MAX_KV_KEY, "kv_set key")?;
            let value = read_bytes(&caller, vp, vl, MAX_KV_VALUE, "kv_set value")?;
            let host = caller.data_mut();
            let old = host.kv.get(&key).map(|v| key.len() + v.len()).unwrap_or(0);
            let total = host.kv_bytes - old + key.len() + value.len();
            if total > MAX_KV_TOTAL {
                return Ok(-1);
            }
            host.kv_bytes = total;
            host.kv.insert(key, value);
            Ok(0)
        },
    )?;
    linker.func_wrap("vmi", "kv_delete", |mut caller: Caller<'_, Host>, kp: i32, kl: i32| -> HostResult<()> {
        let key = read_bytes(&caller, kp, kl, MAX_KV_KEY, "kv_delete key")?;
        let host = caller.data_mut();
        if let Some(v) = host.kv.remove(&key) {
            host.kv_bytes -= key.len() + v.len();
        }
        Ok(())
    })?;
    Ok(())
}

impl wasmtime::ResourceLimiter for Host {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired as u64 <= self.memory_limit;
        if !ok {
            self.hit_memory_limit = true;
        }
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmi_engine::ManualClock;

    #[test]
    fn host_state_round_trips() {
        let clock = ManualClock::new(5);
        let mut host = Host::new(clock.clone(), 42, 1 << 20);
        host.timers.insert(3, 99);
        host.mailbox.push_back(Mail { from: "a".into(), subject: "b".into(), body: "c\nd".into() });
        host.notifications.push_back(Notification { title: "t".into(), body: "u".into(), at_ns: 7 });
        host.kv.insert(b"notes.text".to_vec(), b"hello".to_vec());
        host.framebuffer = Some(Framebuffer { ptr: 64, width: 2, height: 2 });
        host.add_damage(0, 0, 1, 1);
        host.next_random();
        let mut w = Writer::default();
        host.save(&mut w);
        let blob = w.into_inner();

        let mut back = Host::new(clock, 1, 1 << 20);
        back.load(&mut Reader::new(&blob)).expect("loads");
        assert_eq!(back.rng, host.rng);
        assert_eq!(back.timers, host.timers);
        assert_eq!(back.mailbox, host.mailbox);
        assert_eq!(back.notifications, host.notifications);
        assert_eq!(back.kv, host.kv);
        assert_eq!(back.kv_bytes, 15);
        assert_eq!(back.framebuffer, host.framebuffer);
        assert_eq!(back.damage, host.damage);
        assert_eq!(kv_of_host_state(&blob).expect("kv"), host.kv);

        for cut in 0..blob.len() {
            let mut h = Host::new(ManualClock::new(0), 1, 0);
            assert!(h.load(&mut Reader::new(&blob[..cut])).is_err(), "prefix {cut} must be refused");
        }
    }

    #[test]
    fn damage_is_clipped_and_bounded() {
        let mut host = Host::new(ManualClock::new(0), 1, 0);
        host.add_damage(0, 0, 10, 10); // no framebuffer yet: ignored
        assert!(host.damage.is_empty());
        host.framebuffer = Some(Framebuffer { ptr: 0, width: 100, height: 50 });
        host.add_damage(-5, 40, 20, 100);
        assert_eq!(host.damage, vec![Rect { x: 0, y: 40, w: 15, h: 10 }]);
        for i in 0..100 {
            host.add_damage(i, 0, 1, 1);
        }
        assert!(host.damage.len() <= MAX_DAMAGE);
    }
}
