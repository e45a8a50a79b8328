//! The services the phone needs from its host, as a trait: [`VmiHost`] is the real one
//! (the `vmi` imports through the SDK); tests drive the whole phone with a fake.

use vmi_guest_sdk::Mail;
use vmi_guest_sdk::gfx::Canvas;

/// What the phone asks of the world outside its memory (docs/GUEST_ABI.md, "Imports").
pub trait Host {
    /// Virtual monotonic time, ns since the VM was created.
    fn monotonic_ns(&mut self) -> u64;
    /// Wall-clock time, ns since the Unix epoch.
    fn wall_ns(&mut self) -> u64;
    /// Arms (or re-arms) timer `id` for monotonic time `deadline_ns`.
    fn timer_set(&mut self, id: u32, deadline_ns: u64);
    /// Disarms timer `id`.
    fn timer_cancel(&mut self, id: u32);
    /// Raises a notification; false when the host dropped it.
    fn notify(&mut self, title: &str, body: &str) -> bool;
    /// Takes the oldest unread mail from the user's mailbox.
    fn mailbox_fetch(&mut self) -> Option<Mail>;
    /// Reads a key of the persistent store.
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Writes a key of the persistent store; false when over a limit.
    fn kv_set(&mut self, key: &str, value: &[u8]) -> bool;
    /// Hands the frame's damage to the display.
    fn present(&mut self, canvas: &mut Canvas);
    /// Copies text to the user's clipboard (the terminals watching get it).
    fn clipboard_set(&mut self, text: &str);
    /// A random number from the VM's generator.
    fn random_u64(&mut self) -> u64;
}

/// The VMI host: every call is a `vmi` import (panics off wasm32).
#[derive(Clone, Copy, Debug, Default)]
pub struct VmiHost;

impl Host for VmiHost {
    fn monotonic_ns(&mut self) -> u64 {
        vmi_guest_sdk::monotonic_ns()
    }
    fn wall_ns(&mut self) -> u64 {
        vmi_guest_sdk::wall_ns()
    }
    fn timer_set(&mut self, id: u32, deadline_ns: u64) {
        vmi_guest_sdk::timer_set(id, deadline_ns)
    }
    fn timer_cancel(&mut self, id: u32) {
        vmi_guest_sdk::timer_cancel(id)
    }
    fn notify(&mut self, title: &str, body: &str) -> bool {
        vmi_guest_sdk::notify(title, body)
    }
    fn mailbox_fetch(&mut self) -> Option<Mail> {
        vmi_guest_sdk::mailbox_fetch()
    }
    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        vmi_guest_sdk::kv_get(key)
    }
    fn kv_set(&mut self, key: &str, value: &[u8]) -> bool {
        vmi_guest_sdk::kv_set(key, value)
    }
    fn present(&mut self, canvas: &mut Canvas) {
        canvas.present()
    }
    fn clipboard_set(&mut self, text: &str) {
        vmi_guest_sdk::clipboard_set(text)
    }
    fn random_u64(&mut self) -> u64 {
        vmi_guest_sdk::random_u64()
    }
}
