//! Raw imports of the `vmi` host module (docs/GUEST_ABI.md). Prefer the safe wrappers in
//! the crate root.

#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)] // each is documented in docs/GUEST_ABI.md
#[link(wasm_import_module = "vmi")]
unsafe extern "C" {
    pub fn clock_monotonic_ns() -> i64;
    pub fn clock_wall_ns() -> i64;
    pub fn timer_set(id: i32, deadline_ns: i64);
    pub fn timer_cancel(id: i32);
    pub fn random_fill(ptr: i32, len: i32);
    pub fn log(level: i32, ptr: i32, len: i32);
    pub fn fb_attach(ptr: i32, width: i32, height: i32);
    pub fn fb_damage(x: i32, y: i32, w: i32, h: i32);
    pub fn notify(title_ptr: i32, title_len: i32, body_ptr: i32, body_len: i32) -> i32;
    pub fn mailbox_fetch(buf_ptr: i32, buf_len: i32) -> i32;
    pub fn kv_get(key_ptr: i32, key_len: i32, buf_ptr: i32, buf_len: i32) -> i32;
    pub fn kv_set(key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32) -> i32;
    pub fn kv_delete(key_ptr: i32, key_len: i32);
    pub fn clipboard_set(ptr: i32, len: i32);
}

/// Off wasm32 there is no host: the app's pure logic still compiles and unit-tests on the
/// build machine, and any call that needs the host says so plainly.
#[cfg(not(target_arch = "wasm32"))]
#[allow(missing_docs, clippy::missing_safety_doc)]
mod off_host {
    fn no_host(name: &str) -> ! {
        panic!("vmi host function `{name}` exists only inside a wasm32 phone image")
    }
    pub unsafe fn clock_monotonic_ns() -> i64 {
        no_host("clock_monotonic_ns")
    }
    pub unsafe fn clock_wall_ns() -> i64 {
        no_host("clock_wall_ns")
    }
    pub unsafe fn timer_set(_: i32, _: i64) {
        no_host("timer_set")
    }
    pub unsafe fn timer_cancel(_: i32) {
        no_host("timer_cancel")
    }
    pub unsafe fn random_fill(_: i32, _: i32) {
        no_host("random_fill")
    }
    pub unsafe fn log(_: i32, _: i32, _: i32) {
        no_host("log")
    }
    pub unsafe fn fb_attach(_: i32, _: i32, _: i32) {
        no_host("fb_attach")
    }
    pub unsafe fn fb_damage(_: i32, _: i32, _: i32, _: i32) {
        no_host("fb_damage")
    }
    pub unsafe fn notify(_: i32, _: i32, _: i32, _: i32) -> i32 {
        no_host("notify")
    }
    pub unsafe fn mailbox_fetch(_: i32, _: i32) -> i32 {
        no_host("mailbox_fetch")
    }
    pub unsafe fn kv_get(_: i32, _: i32, _: i32, _: i32) -> i32 {
        no_host("kv_get")
    }
    pub unsafe fn kv_set(_: i32, _: i32, _: i32, _: i32) -> i32 {
        no_host("kv_set")
    }
    pub unsafe fn kv_delete(_: i32, _: i32) {
        no_host("kv_delete")
    }
    pub unsafe fn clipboard_set(_: i32, _: i32) {
        no_host("clipboard_set")
    }
}
#[cfg(not(target_arch = "wasm32"))]
pub use off_host::*;
