//! Host-side state of one phone and what each `vmi` import does (docs/GUEST_ABI.md).
//!
//! Everything the guest can observe besides its own memory lives in [`Host`]: the
//! virtual clock, timers, RNG, mailbox, undelivered notifications, the persistent
//! key-value store and the framebuffer's place. [`Host::save`] and [`Host::load`] turn
//! it into the snapshot's host-state blob, so a restored phone continues exactly.
//!
//! The imports are methods on [`Host`] that reach the guest's memory through
//! [`GuestMemory`], so the runtime that calls them (wasmtime on a site, the browser's own
//! engine on a terminal) only forwards calls: the ABI's rules are written once, here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use vmi_engine::{Carryover, Clock, LogLevel, Mail, Notification, Rect, VirtualClock};
use wasmparser::ValType;

use crate::GuestAbiError;
use crate::guest_log::{GuestLog, MAX_LOG_LINE};
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
    ("clipboard_set", &[I32, I32], &[]),
];

/// Largest text a guest may copy to the clipboard (`clipboard_set`), in bytes.
pub const MAX_CLIPBOARD: usize = 65_535;

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
    /// Set once instantiation is done: a host call before that came from the module's start
    /// function, which runs again at every restore, so it is refused.
    pub instantiated: bool,
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
    /// Memory cap in bytes (enforced by the runtime).
    pub memory_limit: u64,
    /// Set when the guest hit the memory cap, so the crash reason can say so.
    pub hit_memory_limit: bool,
    /// Lines the guest logged, until the host takes them (not saved in snapshots).
    pub logs: GuestLog,
    /// Text the guest copied, until the host takes it (output, like logs: not saved in snapshots).
    pub clipboard: Option<String>,
}

impl Host {
    /// A fresh phone's host state.
    pub fn new(clock: Arc<dyn Clock>, rng_seed: u64, memory_limit: u64) -> Host {
        let vclock = VirtualClock::start(clock.as_ref());
        Host {
            instantiated: false,
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
            logs: GuestLog::default(),
            clipboard: None,
        }
    }

    /// Virtual time now.
    pub fn now_ns(&self) -> u64 {
        self.vclock.now_ns(self.clock.as_ref())
    }

    /// What a next life of this phone keeps.
    pub fn carryover(&self) -> Carryover {
        Carryover {
            kv: self.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            mailbox: self.mailbox.iter().cloned().collect(),
            virtual_ns: self.now_ns(),
            wall_ns: self.clock.wall_ns(),
        }
    }

    /// Starts a next life from `carried`: its store, its mail, and its clock going on.
    /// Refuses what a guest could never have put there (the limits of docs/GUEST_ABI.md).
    pub fn take_over(&mut self, carried: &Carryover) -> Result<(), String> {
        if let Some((k, v)) = carried.kv.iter().find(|(k, v)| k.len() > MAX_KV_KEY || v.len() > MAX_KV_VALUE) {
            return Err(format!(
                "key-value entry of {} + {} bytes is over the limits ({MAX_KV_KEY} per key, {MAX_KV_VALUE} per value)",
                k.len(),
                v.len()
            ));
        }
        let kv_bytes: usize = carried.kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        if kv_bytes > MAX_KV_TOTAL {
            return Err(format!("key-value store of {kv_bytes} bytes is over the limit of {MAX_KV_TOTAL}"));
        }
        let mail_bytes: usize = carried.mailbox.iter().map(|m| m.from.len() + m.subject.len() + m.body.len()).sum();
        if carried.mailbox.len() > MAX_MAILBOX || mail_bytes > MAX_MAILBOX_BYTES {
            return Err(format!(
                "mailbox of {} mails ({mail_bytes} bytes) is over the limits ({MAX_MAILBOX} mails, {MAX_MAILBOX_BYTES} bytes)",
                carried.mailbox.len()
            ));
        }
        self.kv = carried.kv.iter().cloned().collect();
        self.kv_bytes = self.kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.mailbox = carried.mailbox.iter().cloned().collect();
        self.vclock = VirtualClock::resume(self.clock.as_ref(), carried.virtual_ns, carried.wall_ns);
        Ok(())
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
    pub fn load(&mut self, r: &mut Reader<'_>) -> Result<(), GuestAbiError> {
        let version = r.u8()?;
        if version != HOST_STATE_VERSION {
            return Err(GuestAbiError::HostState(format!(
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
            other => return Err(GuestAbiError::HostState(format!("framebuffer tag {other}"))),
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

fn load_kv(r: &mut Reader<'_>) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, GuestAbiError> {
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
pub fn kv_of_host_state(blob: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, GuestAbiError> {
    let mut host = Host::new(vmi_engine::ManualClock::new(0), 1, 0);
    host.load(&mut Reader::new(blob))?;
    Ok(host.kv)
}

/// What a snapshot (its host-state blob and its header's clock readings) carries into a
/// next life of the phone.
pub fn carryover_of_host_state(blob: &[u8], virtual_ns: u64, wall_ns: u64) -> Result<Carryover, GuestAbiError> {
    let mut host = Host::new(vmi_engine::ManualClock::new(0), 1, 0);
    host.load(&mut Reader::new(blob))?;
    Ok(Carryover { kv: host.kv.into_iter().collect(), mailbox: host.mailbox.into(), virtual_ns, wall_ns })
}

/// The guest's linear memory as the imports see it. Ranges passed in are already checked
/// against [`GuestMemory::size`].
pub trait GuestMemory {
    /// Bytes of memory.
    fn size(&self) -> usize;
    /// Copies `out.len()` bytes at `at` into `out`.
    fn read(&self, at: usize, out: &mut [u8]);
    /// Copies `bytes` to `at`.
    fn write(&mut self, at: usize, bytes: &[u8]);
}

/// Guest memory the host can borrow as a byte slice (wasmtime's linear memory).
pub struct SliceMemory<'a>(pub &'a mut [u8]);

impl GuestMemory for SliceMemory<'_> {
    fn size(&self) -> usize {
        self.0.len()
    }
    fn read(&self, at: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.0[at..at + out.len()]);
    }
    fn write(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// Why a host call traps the guest: one line naming the import and what was wrong.
pub type Trap = String;

/// Bounds-checked range of guest memory. Lengths are unsigned: a negative one is a huge
/// one, outside memory.
fn span(memory_len: usize, ptr: i32, len: i32, import: &str, what: &str) -> Result<std::ops::Range<usize>, Trap> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    if p.checked_add(l).is_none_or(|end| end > memory_len) {
        return Err(format!("`vmi.{import}` {what}: {p:#x}+{l} is outside guest memory ({memory_len} bytes)"));
    }
    Ok(p..p + l)
}

/// Checks every pointer and length of a call against memory before the call does anything
/// else, whatever it would have answered (docs/GUEST_ABI.md: an out-of-bounds pointer
/// always traps).
fn check_spans(mem: &dyn GuestMemory, import: &str, spans: &[(i32, i32, &str)]) -> Result<(), Trap> {
    for &(ptr, l, what) in spans {
        span(mem.size(), ptr, l, import, what)?;
    }
    Ok(())
}

/// A length as the ABI means it: unsigned.
fn ulen(len: i32) -> usize {
    len as u32 as usize
}

/// Copies out guest bytes already checked by [`check_spans`].
fn read(mem: &dyn GuestMemory, ptr: i32, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    mem.read(ptr as u32 as usize, &mut out);
    out
}

/// The `vmi` imports. Each checks what the ABI says it must and returns the guest's result,
/// or the reason to trap.
impl Host {
    /// Refuses a host call outside an event (from the module's start function, which runs
    /// again at every restore: its effects on host state would repeat).
    fn in_event(&self, import: &str) -> Result<(), Trap> {
        if self.instantiated {
            return Ok(());
        }
        Err(format!(
            "`vmi.{import}` was called outside an event (from the module's start function?); \
             host functions may be called only from `vmi_init` and `vmi_event` (docs/GUEST_ABI.md)"
        ))
    }

    /// `clock_monotonic_ns`.
    pub fn clock_monotonic_ns(&self) -> Result<i64, Trap> {
        self.in_event("clock_monotonic_ns")?;
        Ok(self.now_ns() as i64)
    }

    /// `clock_wall_ns`.
    pub fn clock_wall_ns(&self) -> Result<i64, Trap> {
        self.in_event("clock_wall_ns")?;
        Ok(self.clock.wall_ns() as i64)
    }

    /// `timer_set`: ids are any i32 (kept as their bits); a deadline in the past fires at once.
    pub fn timer_set(&mut self, id: i32, deadline: i64) -> Result<(), Trap> {
        self.in_event("timer_set")?;
        if self.timers.len() >= MAX_TIMERS && !self.timers.contains_key(&(id as u32)) {
            return Err(format!(
                "`vmi.timer_set`: timer {id} would be armed timer {}; at most {MAX_TIMERS} may be",
                MAX_TIMERS + 1
            ));
        }
        self.timers.insert(id as u32, deadline.max(0) as u64);
        Ok(())
    }

    /// `timer_cancel`.
    pub fn timer_cancel(&mut self, id: i32) -> Result<(), Trap> {
        self.in_event("timer_cancel")?;
        self.timers.remove(&(id as u32));
        Ok(())
    }

    /// `random_fill`.
    pub fn random_fill(&mut self, mem: &mut dyn GuestMemory, ptr: i32, len: i32) -> Result<(), Trap> {
        self.in_event("random_fill")?;
        let range = span(mem.size(), ptr, len, "random_fill", "buffer")?;
        let mut bytes = vec![0u8; range.len()];
        for chunk in bytes.chunks_mut(8) {
            let r = self.next_random().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        mem.write(range.start, &bytes);
        Ok(())
    }

    /// `log`: the whole line must be in memory; only the first [`MAX_LOG_LINE`] bytes are kept.
    pub fn log(&mut self, mem: &dyn GuestMemory, level: i32, ptr: i32, len: i32) -> Result<(), Trap> {
        self.in_event("log")?;
        check_spans(mem, "log", &[(ptr, len, "text")])?;
        let bytes = read(mem, ptr, ulen(len).min(MAX_LOG_LINE));
        let at_ns = self.now_ns();
        self.logs.push(LogLevel::from_abi(level), at_ns, &bytes);
        Ok(())
    }

    /// `fb_attach`.
    pub fn fb_attach(&mut self, mem: &dyn GuestMemory, ptr: i32, width: i32, height: i32) -> Result<(), Trap> {
        self.in_event("fb_attach")?;
        if width <= 0 || height <= 0 || width > 8192 || height > 8192 {
            return Err(format!("`vmi.fb_attach`: bad size {width}x{height} (1..=8192 each)"));
        }
        // At most 8192*8192*4 = 2^28 bytes: fits an i32.
        check_spans(mem, "fb_attach", &[(ptr, width * height * 4, "framebuffer")])?;
        let fb = Framebuffer { ptr: ptr as u32, width: width as u32, height: height as u32 };
        if self.framebuffer != Some(fb) {
            self.framebuffer = Some(fb);
            self.damage = vec![Rect { x: 0, y: 0, w: fb.width, h: fb.height }];
        }
        Ok(())
    }

    /// `fb_damage`.
    pub fn fb_damage(&mut self, x: i32, y: i32, w: i32, h: i32) -> Result<(), Trap> {
        self.in_event("fb_damage")?;
        self.add_damage(x, y, w, h);
        Ok(())
    }

    /// `clipboard_set`: only the latest copy matters (a terminal's clipboard holds one text).
    pub fn clipboard_set(&mut self, mem: &dyn GuestMemory, ptr: i32, len: i32) -> Result<(), Trap> {
        self.in_event("clipboard_set")?;
        check_spans(mem, "clipboard_set", &[(ptr, len, "text")])?;
        if ulen(len) > MAX_CLIPBOARD {
            return Err(format!("`vmi.clipboard_set`: {len} bytes is over the limit of {MAX_CLIPBOARD}"));
        }
        self.clipboard = Some(String::from_utf8_lossy(&read(mem, ptr, ulen(len))).into_owned());
        Ok(())
    }

    /// `notify`: 0, or -1 when the queue is full.
    pub fn notify(&mut self, mem: &dyn GuestMemory, tp: i32, tl: i32, bp: i32, bl: i32) -> Result<i32, Trap> {
        self.in_event("notify")?;
        check_spans(mem, "notify", &[(tp, tl, "title"), (bp, bl, "body")])?;
        for (len, what) in [(tl, "title"), (bl, "body")] {
            if ulen(len) > MAX_NOTIFICATION_FIELD {
                return Err(format!("`vmi.notify` {what}: {len} bytes is over the limit of {MAX_NOTIFICATION_FIELD}"));
            }
        }
        let title = read(mem, tp, ulen(tl));
        let body = read(mem, bp, ulen(bl));
        if self.notifications.len() >= MAX_NOTIFICATIONS {
            return Ok(-1);
        }
        let at_ns = self.now_ns();
        self.notifications.push_back(Notification {
            title: String::from_utf8_lossy(&title).into_owned(),
            body: String::from_utf8_lossy(&body).into_owned(),
            at_ns,
        });
        Ok(0)
    }

    /// `mailbox_fetch`: the record's length, 0 for an empty mailbox, minus the length needed
    /// when the buffer is too small.
    pub fn mailbox_fetch(&mut self, mem: &mut dyn GuestMemory, ptr: i32, len: i32) -> Result<i32, Trap> {
        self.in_event("mailbox_fetch")?;
        check_spans(mem, "mailbox_fetch", &[(ptr, len, "buffer")])?;
        let Some(mail) = self.mailbox.front() else { return Ok(0) };
        let record = format!("{}\n{}\n{}", mail.from, mail.subject, mail.body).into_bytes();
        if record.len() > ulen(len) {
            return Ok(-(record.len() as i32));
        }
        mem.write(ptr as u32 as usize, &record);
        self.mailbox.pop_front();
        Ok(record.len() as i32)
    }

    /// `kv_get`: the value's length (copied when it fits), or -1 when absent.
    pub fn kv_get(&mut self, mem: &mut dyn GuestMemory, kp: i32, kl: i32, bp: i32, bl: i32) -> Result<i32, Trap> {
        self.in_event("kv_get")?;
        check_spans(mem, "kv_get", &[(kp, kl, "key"), (bp, bl, "buffer")])?;
        // No key over the limit can be stored, so such a key is simply absent.
        if ulen(kl) > MAX_KV_KEY {
            return Ok(-1);
        }
        let key = read(mem, kp, ulen(kl));
        let Some(value) = self.kv.get(&key) else { return Ok(-1) };
        if value.len() <= ulen(bl) {
            mem.write(bp as u32 as usize, value);
        }
        Ok(value.len() as i32)
    }

    /// `kv_set`: 0, or -1 over a limit.
    pub fn kv_set(&mut self, mem: &dyn GuestMemory, kp: i32, kl: i32, vp: i32, vl: i32) -> Result<i32, Trap> {
        self.in_event("kv_set")?;
        check_spans(mem, "kv_set", &[(kp, kl, "key"), (vp, vl, "value")])?;
        if ulen(kl) > MAX_KV_KEY || ulen(vl) > MAX_KV_VALUE {
            return Ok(-1);
        }
        let key = read(mem, kp, ulen(kl));
        let value = read(mem, vp, ulen(vl));
        let old = self.kv.get(&key).map(|v| key.len() + v.len()).unwrap_or(0);
        let total = self.kv_bytes - old + key.len() + value.len();
        if total > MAX_KV_TOTAL {
            return Ok(-1);
        }
        self.kv_bytes = total;
        self.kv.insert(key, value);
        Ok(0)
    }

    /// `kv_delete`.
    pub fn kv_delete(&mut self, mem: &dyn GuestMemory, kp: i32, kl: i32) -> Result<(), Trap> {
        self.in_event("kv_delete")?;
        check_spans(mem, "kv_delete", &[(kp, kl, "key")])?;
        if ulen(kl) > MAX_KV_KEY {
            return Ok(()); // never stored
        }
        let key = read(mem, kp, ulen(kl));
        if let Some(v) = self.kv.remove(&key) {
            self.kv_bytes -= key.len() + v.len();
        }
        Ok(())
    }

    /// The next timer due by virtual time now, removed from the armed set (earliest
    /// deadline first, then lowest id).
    pub fn take_due_timer(&mut self) -> Option<u32> {
        let now = self.now_ns();
        let id = self.timers.iter().filter(|(_, d)| **d <= now).min_by_key(|(id, d)| (**d, **id)).map(|(id, _)| *id)?;
        self.timers.remove(&id);
        Some(id)
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
