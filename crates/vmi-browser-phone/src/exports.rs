//! The module's interface to the page (`web/offline-phone.js`), plain WebAssembly
//! functions with no generated glue:
//!
//! - bytes in: the page asks [`input_buffer`] for room, writes there, then calls;
//! - bytes out: a call leaves them in one output buffer ([`output_ptr`], [`output_len`]);
//! - failures: a call returns a negative number and leaves its message in the output;
//! - the guest's imports: `vmi_<name>` for each function of docs/GUEST_ABI.md; after one
//!   the page calls [`take_trap`], and a positive answer means "trap with the output's text";
//! - what the module imports from the page (`env`): the guest's memory (`guest_size`,
//!   `guest_read`, `guest_write`) and the clocks (`wall_ms`, `monotonic_ms`).
//!
//! One phone per module instance; the page is single-threaded, and no call here runs guest
//! code, so no call can re-enter another.

use std::cell::RefCell;
use std::sync::Arc;

use vmi_engine::Clock;
use vmi_guest_abi::host::{GuestMemory, Trap};
use vmi_guest_abi::image::GlobalKind;
use vmi_snapshot::GlobalValue;

use crate::phone::{OfflinePhone, Restored};

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn guest_size() -> u32;
    fn guest_read(at: u32, len: u32, dst: *mut u8);
    fn guest_write(at: u32, src: *const u8, len: u32);
    fn wall_ms() -> f64;
    fn monotonic_ms() -> f64;
}

/// The page's clocks: `Date.now()` and `performance.now()`.
struct PageClock;

impl Clock for PageClock {
    fn wall_ns(&self) -> u64 {
        // SAFETY: an import without arguments or memory effects.
        (unsafe { wall_ms() } * 1e6) as u64
    }
    fn monotonic_ns(&self) -> u64 {
        // SAFETY: as above.
        (unsafe { monotonic_ms() } * 1e6) as u64
    }
}

/// The guest instance's memory, reached through the page.
struct PageMemory;

impl GuestMemory for PageMemory {
    fn size(&self) -> usize {
        // SAFETY: an import without arguments or memory effects.
        unsafe { guest_size() as usize }
    }
    fn read(&self, at: usize, out: &mut [u8]) {
        // SAFETY: `out` is writable for its length; the page copies exactly that many bytes.
        unsafe { guest_read(at as u32, out.len() as u32, out.as_mut_ptr()) }
    }
    fn write(&mut self, at: usize, bytes: &[u8]) {
        // SAFETY: `bytes` is readable for its length; the page copies exactly that many.
        unsafe { guest_write(at as u32, bytes.as_ptr(), bytes.len() as u32) }
    }
}

#[derive(Default)]
struct State {
    phone: Option<OfflinePhone>,
    input: Vec<u8>,
    output: Vec<u8>,
    trap: Option<Trap>,
    restored_globals: Vec<GlobalValue>,
    globals_to_save: Vec<GlobalValue>,
    event: [i32; 4],
    damage: Vec<u32>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// Runs `f` on the open phone; a failure's text goes to the output and -1 comes back.
fn on_phone(f: impl FnOnce(&mut OfflinePhone, &mut State) -> Result<i32, String>) -> i32 {
    with(|s| {
        let Some(mut phone) = s.phone.take() else {
            s.output = b"no phone is open".to_vec();
            return -1;
        };
        let r = f(&mut phone, s);
        s.phone = Some(phone);
        r.unwrap_or_else(|e| {
            s.output = e.into_bytes();
            -1
        })
    })
}

/// Room for `len` bytes of input; returns where to write them.
#[unsafe(no_mangle)]
pub extern "C" fn input_buffer(len: u32) -> *mut u8 {
    with(|s| {
        s.input.clear();
        s.input.resize(len as usize, 0);
        s.input.as_mut_ptr()
    })
}

/// Where the last call's output is.
#[unsafe(no_mangle)]
pub extern "C" fn output_ptr() -> *const u8 {
    with(|s| s.output.as_ptr())
}

/// How long the last call's output is.
#[unsafe(no_mangle)]
pub extern "C" fn output_len() -> u32 {
    with(|s| s.output.len() as u32)
}

/// Opens the checkout bundle in the input. Output: the instrumented image to instantiate.
#[unsafe(no_mangle)]
pub extern "C" fn open() -> i32 {
    with(|s| match OfflinePhone::open(&s.input, Arc::new(PageClock)) {
        Ok((phone, instrumented)) => {
            s.phone = Some(phone);
            s.output = instrumented;
            0
        }
        Err(e) => {
            s.output = e.to_string().into_bytes();
            -1
        }
    })
}

/// Output: the lease, JSON.
#[unsafe(no_mangle)]
pub extern "C" fn lease() -> i32 {
    on_phone(|phone, s| {
        s.output = serde_json::to_vec(phone.lease()).map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// The image's ABI version (its `vmi_abi_version`, 1 without one).
#[unsafe(no_mangle)]
pub extern "C" fn set_abi_version(version: u32) -> i32 {
    on_phone(|phone, _| {
        phone.set_abi_version(version);
        Ok(0)
    })
}

/// Restores from the base and, when the input is not empty, the saved snapshot in it.
/// Output: the memory to copy into the instance; globals by [`global_count`]/[`global_bits`].
#[unsafe(no_mangle)]
pub extern "C" fn restore() -> i32 {
    on_phone(|phone, s| {
        let saved = std::mem::take(&mut s.input);
        let Restored { memory, globals } =
            phone.restore(if saved.is_empty() { None } else { Some(&saved) }).map_err(|e| e.to_string())?;
        s.output = memory;
        s.restored_globals = globals;
        Ok(0)
    })
}

/// How many mutable globals the image has.
#[unsafe(no_mangle)]
pub extern "C" fn global_count() -> u32 {
    with(|s| s.phone.as_ref().map(|p| p.globals().len() as u32).unwrap_or(0))
}

/// Global `i`'s type: 0 i32, 1 i64, 2 f32, 3 f64 (-1 out of range); output: the name the
/// instance exports it under.
#[unsafe(no_mangle)]
pub extern "C" fn global_kind(i: u32) -> i32 {
    with(|s| {
        let Some((name, kind)) = s.phone.as_ref().and_then(|p| p.globals().get(i as usize)) else { return -1 };
        let kind = match kind {
            GlobalKind::I32 => 0,
            GlobalKind::I64 => 1,
            GlobalKind::F32 => 2,
            GlobalKind::F64 => 3,
        };
        s.output = name.clone().into_bytes();
        kind
    })
}

/// The restored value of global `i`: the integer, or a float's bits.
#[unsafe(no_mangle)]
pub extern "C" fn global_bits(i: u32) -> i64 {
    with(|s| match s.restored_globals.get(i as usize) {
        Some(GlobalValue::I32(v)) => i64::from(*v),
        Some(GlobalValue::I64(v)) => *v,
        Some(GlobalValue::F32(v)) => i64::from(*v),
        Some(GlobalValue::F64(v)) => *v as i64,
        None => 0,
    })
}

/// Sets global `i` for the next [`save`] (the instance's value: the integer, or a float's bits).
#[unsafe(no_mangle)]
pub extern "C" fn set_global(i: u32, bits: i64) -> i32 {
    on_phone(|phone, s| {
        let kind = phone.globals().get(i as usize).ok_or_else(|| format!("no global {i}"))?.1;
        let value = match kind {
            GlobalKind::I32 => GlobalValue::I32(bits as i32),
            GlobalKind::I64 => GlobalValue::I64(bits),
            GlobalKind::F32 => GlobalValue::F32(bits as u32),
            GlobalKind::F64 => GlobalValue::F64(bits as u64),
        };
        let n = phone.globals().len();
        s.globals_to_save.resize(n, GlobalValue::I32(0));
        s.globals_to_save[i as usize] = value;
        Ok(0)
    })
}

/// Saves the phone: the input is the instance's memory, the globals those set by
/// [`set_global`]. Output: an incremental snapshot against the checkout base.
#[unsafe(no_mangle)]
pub extern "C" fn save() -> i32 {
    on_phone(|phone, s| {
        let memory = std::mem::take(&mut s.input);
        s.output = phone.save(&memory, &s.globals_to_save).map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Output: a checkin body for the saved snapshot in the input (empty: the phone unchanged).
#[unsafe(no_mangle)]
pub extern "C" fn checkin() -> i32 {
    on_phone(|phone, s| {
        let saved = std::mem::take(&mut s.input);
        s.output = phone.checkin(if saved.is_empty() { None } else { Some(&saved) });
        Ok(0)
    })
}

/// The guest call for the terminal message in the input: 1 and [`event`] holds it, 0
/// when the guest is not called, -1 on a bad message.
#[unsafe(no_mangle)]
pub extern "C" fn message() -> i32 {
    on_phone(|phone, s| match phone.event_for(&s.input).map_err(|e| e.to_string())? {
        Some(e) => {
            s.event = e;
            Ok(1)
        }
        None => Ok(0),
    })
}

/// The next timer due: 1 and [`event`] holds its call, 0 when none is due.
#[unsafe(no_mangle)]
pub extern "C" fn due_timer() -> i32 {
    on_phone(|phone, s| match phone.due_timer() {
        Some(e) => {
            s.event = e;
            Ok(1)
        }
        None => Ok(0),
    })
}

/// Argument `i` (0 kind, then a, b, c) of the guest call prepared by [`message`] or [`due_timer`].
#[unsafe(no_mangle)]
pub extern "C" fn event(i: u32) -> i32 {
    with(|s| s.event.get(i as usize).copied().unwrap_or(0))
}

/// Milliseconds until the next timer is due, or -1 without one.
#[unsafe(no_mangle)]
pub extern "C" fn next_timer_ms() -> f64 {
    with(|s| s.phone.as_ref().and_then(|p| p.next_timer_ms()).unwrap_or(-1.0))
}

/// The framebuffer and its damage since the last call: returns the number of damage
/// rectangles (or -1 without a framebuffer); output: u32s `ptr, width, height` then `x, y,
/// w, h` per rectangle, little-endian.
#[unsafe(no_mangle)]
pub extern "C" fn frame() -> i32 {
    on_phone(|phone, s| {
        let (fb, damage) = phone.take_frame();
        let Some(fb) = fb else { return Ok(-1) };
        s.damage.clear();
        s.damage.extend([fb.ptr, fb.width, fb.height]);
        for r in &damage {
            s.damage.extend([r.x, r.y, r.w, r.h]);
        }
        s.output = s.damage.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(damage.len() as i32)
    })
}

/// Output: what the phone put out since the last call (notifications, clipboard, logs), JSON.
#[unsafe(no_mangle)]
pub extern "C" fn outputs() -> i32 {
    on_phone(|phone, s| {
        s.output = phone.take_outputs().into_bytes();
        Ok(0)
    })
}

/// After a `vmi_*` import: 1 when the guest must trap (the output says why), else 0.
#[unsafe(no_mangle)]
pub extern "C" fn take_trap() -> i32 {
    with(|s| match s.trap.take() {
        Some(t) => {
            s.output = t.into_bytes();
            1
        }
        None => 0,
    })
}

/// Runs one import on the phone's host state; a trap is kept for [`take_trap`] and the
/// guest gets `fallback` (it never sees it: the page throws).
fn import<T>(fallback: T, f: impl FnOnce(&mut vmi_guest_abi::host::Host) -> Result<T, Trap>) -> T {
    with(|s| {
        let Some(phone) = s.phone.as_mut() else {
            s.trap = Some("no phone is open".into());
            return fallback;
        };
        match f(&mut phone.host) {
            Ok(v) => v,
            Err(t) => {
                s.trap = Some(t);
                fallback
            }
        }
    })
}

/// `vmi.clock_monotonic_ns`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_clock_monotonic_ns() -> i64 {
    import(0, |h| h.clock_monotonic_ns())
}
/// `vmi.clock_wall_ns`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_clock_wall_ns() -> i64 {
    import(0, |h| h.clock_wall_ns())
}
/// `vmi.timer_set`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_timer_set(id: i32, deadline: i64) {
    import((), |h| h.timer_set(id, deadline))
}
/// `vmi.timer_cancel`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_timer_cancel(id: i32) {
    import((), |h| h.timer_cancel(id))
}
/// `vmi.random_fill`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_random_fill(ptr: i32, len: i32) {
    import((), |h| h.random_fill(&mut PageMemory, ptr, len))
}
/// `vmi.log`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_log(level: i32, ptr: i32, len: i32) {
    import((), |h| h.log(&PageMemory, level, ptr, len))
}
/// `vmi.fb_attach`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_fb_attach(ptr: i32, width: i32, height: i32) {
    import((), |h| h.fb_attach(&PageMemory, ptr, width, height))
}
/// `vmi.fb_damage`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_fb_damage(x: i32, y: i32, w: i32, h: i32) {
    import((), |host| host.fb_damage(x, y, w, h))
}
/// `vmi.notify`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_notify(tp: i32, tl: i32, bp: i32, bl: i32) -> i32 {
    import(-1, |h| h.notify(&PageMemory, tp, tl, bp, bl))
}
/// `vmi.mailbox_fetch`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_mailbox_fetch(ptr: i32, len: i32) -> i32 {
    import(0, |h| h.mailbox_fetch(&mut PageMemory, ptr, len))
}
/// `vmi.kv_get`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_kv_get(kp: i32, kl: i32, bp: i32, bl: i32) -> i32 {
    import(-1, |h| h.kv_get(&mut PageMemory, kp, kl, bp, bl))
}
/// `vmi.kv_set`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_kv_set(kp: i32, kl: i32, vp: i32, vl: i32) -> i32 {
    import(-1, |h| h.kv_set(&PageMemory, kp, kl, vp, vl))
}
/// `vmi.kv_delete`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_kv_delete(kp: i32, kl: i32) {
    import((), |h| h.kv_delete(&PageMemory, kp, kl))
}
/// `vmi.clipboard_set`.
#[unsafe(no_mangle)]
pub extern "C" fn vmi_clipboard_set(ptr: i32, len: i32) {
    import((), |h| h.clipboard_set(&PageMemory, ptr, len))
}
