//! The `vmi` imports in a wasmtime linker: each forwards to the shared
//! [`vmi_guest_abi::host::Host`], which holds the state and the ABI's rules, with the
//! guest's memory as a byte slice. Only the runtime's own concerns are here: the store's
//! data, the memory handle, and the memory cap as a [`wasmtime::ResourceLimiter`].

use vmi_guest_abi::host::{Host, SliceMemory, Trap};
use wasmtime::{Caller, Linker, Memory};

/// What a phone's wasmtime store holds: the host state and the guest's memory.
pub struct StoreData {
    /// Host state and the imports' rules.
    pub host: Host,
    /// The guest's memory, set right after instantiation.
    pub memory: Option<Memory>,
}

impl StoreData {
    /// A store's data before instantiation.
    pub fn new(host: Host) -> StoreData {
        StoreData { host, memory: None }
    }
}

type HostResult<T> = wasmtime::Result<T>;

fn trap<T>(r: Result<T, Trap>) -> HostResult<T> {
    r.map_err(wasmtime::Error::msg)
}

/// Runs an import with the guest's memory and the host state. Before instantiation is
/// done there is no memory: the host state refuses the call then (a call from the start
/// function), so an empty memory stands in.
fn with_memory<T>(
    caller: &mut Caller<'_, StoreData>,
    call: impl FnOnce(&mut SliceMemory<'_>, &mut Host) -> Result<T, Trap>,
) -> HostResult<T> {
    match caller.data().memory {
        Some(mem) => {
            let (data, store) = mem.data_and_store_mut(caller);
            trap(call(&mut SliceMemory(data), &mut store.host))
        }
        None => trap(call(&mut SliceMemory(&mut []), &mut caller.data_mut().host)),
    }
}

/// Defines the `vmi` import module in a linker.
pub fn link(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    linker
        .func_wrap("vmi", "clock_monotonic_ns", |c: Caller<'_, StoreData>| trap(c.data().host.clock_monotonic_ns()))?;
    linker.func_wrap("vmi", "clock_wall_ns", |c: Caller<'_, StoreData>| trap(c.data().host.clock_wall_ns()))?;
    linker.func_wrap("vmi", "timer_set", |mut c: Caller<'_, StoreData>, id: i32, deadline: i64| {
        trap(c.data_mut().host.timer_set(id, deadline))
    })?;
    linker.func_wrap("vmi", "timer_cancel", |mut c: Caller<'_, StoreData>, id: i32| {
        trap(c.data_mut().host.timer_cancel(id))
    })?;
    linker.func_wrap("vmi", "random_fill", |mut c: Caller<'_, StoreData>, ptr: i32, len: i32| {
        with_memory(&mut c, |mem, host| host.random_fill(mem, ptr, len))
    })?;
    linker.func_wrap("vmi", "log", |mut c: Caller<'_, StoreData>, level: i32, ptr: i32, len: i32| {
        with_memory(&mut c, |mem, host| host.log(mem, level, ptr, len))
    })?;
    linker.func_wrap("vmi", "fb_attach", |mut c: Caller<'_, StoreData>, ptr: i32, w: i32, h: i32| {
        with_memory(&mut c, |mem, host| host.fb_attach(mem, ptr, w, h))
    })?;
    linker.func_wrap("vmi", "fb_damage", |mut c: Caller<'_, StoreData>, x: i32, y: i32, w: i32, h: i32| {
        trap(c.data_mut().host.fb_damage(x, y, w, h))
    })?;
    linker.func_wrap("vmi", "clipboard_set", |mut c: Caller<'_, StoreData>, ptr: i32, len: i32| {
        with_memory(&mut c, |mem, host| host.clipboard_set(mem, ptr, len))
    })?;
    linker.func_wrap("vmi", "notify", |mut c: Caller<'_, StoreData>, tp: i32, tl: i32, bp: i32, bl: i32| {
        with_memory(&mut c, |mem, host| host.notify(mem, tp, tl, bp, bl))
    })?;
    linker.func_wrap("vmi", "mailbox_fetch", |mut c: Caller<'_, StoreData>, ptr: i32, len: i32| {
        with_memory(&mut c, |mem, host| host.mailbox_fetch(mem, ptr, len))
    })?;
    linker.func_wrap("vmi", "kv_get", |mut c: Caller<'_, StoreData>, kp: i32, kl: i32, bp: i32, bl: i32| {
        with_memory(&mut c, |mem, host| host.kv_get(mem, kp, kl, bp, bl))
    })?;
    linker.func_wrap("vmi", "kv_set", |mut c: Caller<'_, StoreData>, kp: i32, kl: i32, vp: i32, vl: i32| {
        with_memory(&mut c, |mem, host| host.kv_set(mem, kp, kl, vp, vl))
    })?;
    linker.func_wrap("vmi", "kv_delete", |mut c: Caller<'_, StoreData>, kp: i32, kl: i32| {
        with_memory(&mut c, |mem, host| host.kv_delete(mem, kp, kl))
    })?;
    Ok(())
}

impl wasmtime::ResourceLimiter for StoreData {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired as u64 <= self.host.memory_limit;
        if !ok {
            self.host.hit_memory_limit = true;
        }
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
