//! One phone: a wasmtime store, its instance, and the snapshot logic.

use std::sync::Arc;

use vmi_engine::{
    Carryover, EncodedSnapshot, EngineError, Event, Frame, ImageHash, LogLine, MAX_SCREEN_SIDE, Mail, Notification,
    ResourceUsage, SnapshotRequest, VirtualClock, VirtualPhone, VmConfig, VmError, VmInfo, VmStatus,
};
use vmi_snapshot::{GlobalValue, Header, Limits, PAGE_SIZE, SnapshotId, SnapshotKind, SnapshotView};
use wasmtime::{Global, Instance, InstancePre, Memory, Store, Trap, TypedFunc, Val};

use crate::dirty::{self, DirtyTracker};
use vmi_guest_abi::event::{TIMER_EVENT, raw_event};
use vmi_guest_abi::host::{Host, MAX_MAILBOX};
use vmi_guest_abi::image::GlobalKind;
use vmi_guest_abi::persist::{Reader, Writer};

use crate::dirty::TrackerKind;
use crate::hibernate::{Asleep, PageStore};
use crate::host::StoreData;
use crate::{ENGINE_NAME, LoadedImage, WasmEngine};

/// Most timers fired by one [`VirtualPhone::fire_due_timers`] call: a guest that keeps
/// re-arming a timer in the past cannot hold the host in a loop.
const MAX_TIMERS_PER_CALL: usize = 1024;
const WASM_PAGE: u64 = 65536;
/// Threads that decompress a large snapshot during a restore (small ones use one).
const RESTORE_THREADS: usize = 2;

/// A virtual phone on the WebAssembly engine.
pub struct WasmPhone {
    // Dropped before the store: the tracker's userfaultfd unregisters the memory first.
    tracker: Box<dyn DirtyTracker>,
    store: Store<StoreData>,
    memory: Memory,
    globals: Vec<(Global, GlobalKind)>,
    on_event: TypedFunc<(i32, i32, i32, i32), ()>,
    image: Arc<LoadedImage>,
    info: VmInfo,
    status: VmStatus,
    budget: u64,
    /// Memory base and length the tracker watches.
    tracked: (usize, usize),
    /// Set when tracking was lost (memory moved): the next incremental snapshot is full.
    untracked: bool,
    last_snapshot: Option<SnapshotId>,
    /// Round of the last pre-copy snapshot, while a pre-copy sequence is open.
    precopy_round: Option<u32>,
    /// The last good chain (the snapshots after `last_good_base`, or the whole chain without one).
    last_good: Vec<EncodedSnapshot>,
    /// The chain's start as page keys instead of bytes: a hibernated phone gives back its snapshot bytes too.
    last_good_base: Option<KeptSnapshot>,
    events: u64,
    cpu_last: u64,
    cpu_total: u64,
    dirty_scratch: Vec<u32>,
    /// How this phone finds written pages (the engine's choice; None: the best this machine has).
    tracker_kind: Option<TrackerKind>,
    /// Where a hibernated phone's pages go (the engine's, shared by its phones).
    pages: Arc<PageStore>,
    /// Set while hibernated: `store` then holds only the host state, and `memory`, `globals`, `on_event` name
    /// nothing until [`WasmPhone::wake`].
    asleep: Option<Asleep>,
    /// Pages written before the phone last hibernated and not yet in a snapshot.
    carried_dirty: Vec<u32>,
    /// The page keys the phone woke from, still held: the pages not written since need no hashing at the next
    /// hibernation.
    kept_pages: Option<Vec<u32>>,
    /// Pages written since the phone woke, while every write was seen (`None`: not known, hash them all).
    written_since_wake: Option<Vec<u32>>,
    /// Times woken from hibernation.
    wakes: u64,
}

impl Drop for WasmPhone {
    fn drop(&mut self) {
        if let Some(asleep) = self.asleep.take() {
            self.pages.release(&asleep.pages);
        }
        if let Some(kept) = self.kept_pages.take() {
            self.pages.release(&kept);
        }
        if let Some(base) = self.last_good_base.take() {
            self.pages.release(&base.pages);
        }
    }
}

/// A snapshot kept as page keys into the engine's [`PageStore`] (sharing the pages the hibernated phone holds)
/// with what else it said: the last good state of a hibernated phone, rebuilt as a full snapshot only if needed
/// (a crash before its next snapshot).
struct KeptSnapshot {
    id: SnapshotId,
    header: Header,
    globals: Vec<GlobalValue>,
    host_state: Vec<u8>,
    pages: Arc<[u32]>,
}

struct Instantiated {
    store: Store<StoreData>,
    memory: Memory,
    globals: Vec<(Global, GlobalKind)>,
    on_event: TypedFunc<(i32, i32, i32, i32), ()>,
    on_init: TypedFunc<(i32, i32), ()>,
}

/// Why instantiating failed: out of pool slots, or the guest's start function failed (the
/// whole cause chain, so a host call's reason is not lost).
fn instantiation_error(e: wasmtime::Error) -> EngineError {
    let text = format!("{e:#}");
    if text.contains("pooling") || text.contains("concurrent") {
        EngineError::Exhausted(text)
    } else {
        EngineError::Start(VmError::Trap(format!("while instantiating (the start function): {text}")))
    }
}

fn instantiate(engine: &WasmEngine, image: &LoadedImage, host: Host) -> Result<Instantiated, EngineError> {
    let mut store = Store::new(&engine.wasmtime, StoreData::new(host));
    let parts = instantiate_in(&mut store, image)?;
    let (memory, globals, on_event, on_init) = parts;
    Ok(Instantiated { store, memory, globals, on_event, on_init })
}

type Parts = (Memory, Vec<(Global, GlobalKind)>, TypedFunc<(i32, i32, i32, i32), ()>, TypedFunc<(i32, i32), ()>);

/// Instantiates `image` in `store` (whose host state it keeps, whatever happens).
fn instantiate_in(store: &mut Store<StoreData>, image: &LoadedImage) -> Result<Parts, EngineError> {
    // A call from the start function is refused (it runs again at every restore and every wake).
    store.data_mut().host.instantiated = false;
    store.limiter(|host| host);
    store.set_fuel(u64::MAX / 2).map_err(|e| EngineError::Config(e.to_string()))?;
    let instance: Instance = image.pre.instantiate(&mut *store).map_err(instantiation_error)?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| EngineError::ImageRefused("export `memory` missing".into()))?;
    store.data_mut().memory = Some(memory);
    store.data_mut().host.instantiated = true;
    let mut globals = Vec::with_capacity(image.globals.len());
    for (name, kind) in &image.globals {
        let g = instance
            .get_global(&mut *store, name)
            .ok_or_else(|| EngineError::ImageRefused(format!("instrumented export `{name}` missing")))?;
        globals.push((g, *kind));
    }
    let on_event =
        instance.get_typed_func(&mut *store, "vmi_event").map_err(|e| EngineError::ImageRefused(e.to_string()))?;
    let on_init =
        instance.get_typed_func(&mut *store, "vmi_init").map_err(|e| EngineError::ImageRefused(e.to_string()))?;
    Ok((memory, globals, on_event, on_init))
}

/// Instantiates an image once in a scratch store to read its ABI version.
pub(crate) fn probe_abi_version(engine: &WasmEngine, pre: &InstancePre<StoreData>) -> Result<u32, EngineError> {
    let mut store = Store::new(&engine.wasmtime, StoreData::new(Host::new(engine.clock.clone(), 1, u64::MAX)));
    store.set_fuel(10_000_000).map_err(|e| EngineError::Config(e.to_string()))?;
    let instance = pre.instantiate(&mut store).map_err(instantiation_error)?;
    // Absent means version 1; its kind and signature were checked at load (`image::prepare`).
    if instance.get_export(&mut store, "vmi_abi_version").is_none() {
        return Ok(1);
    }
    let version = instance
        .get_typed_func::<(), i32>(&mut store, "vmi_abi_version")
        .map_err(|e| EngineError::ImageRefused(format!("export `vmi_abi_version`: {e:#}")))?;
    version
        .call(&mut store, ())
        .map(|v| v as u32)
        .map_err(|e| EngineError::ImageRefused(format!("`vmi_abi_version` trapped: {e:#}")))
}

impl WasmPhone {
    fn assemble(
        engine: &WasmEngine,
        image: Arc<LoadedImage>,
        inst: Instantiated,
        config: &VmConfig,
    ) -> Result<WasmPhone, EngineError> {
        let tracker = match engine.config.dirty_tracking {
            Some(kind) => dirty::new_tracker(kind).map_err(|e| EngineError::Config(e.to_string()))?,
            None => dirty::best_tracker(),
        };
        let (tracker_kind, pages) = (engine.config.dirty_tracking, engine.pages.clone());
        Ok(WasmPhone {
            tracker,
            store: inst.store,
            memory: inst.memory,
            globals: inst.globals,
            on_event: inst.on_event,
            info: VmInfo { image: image.info.hash, width: config.width, height: config.height },
            image,
            status: VmStatus::Running,
            budget: config.cpu_budget_per_event,
            tracked: (0, 0),
            untracked: true,
            last_snapshot: None,
            precopy_round: None,
            last_good: Vec::new(),
            last_good_base: None,
            events: 0,
            cpu_last: 0,
            cpu_total: 0,
            dirty_scratch: Vec::new(),
            tracker_kind,
            pages,
            asleep: None,
            carried_dirty: Vec::new(),
            kept_pages: None,
            written_since_wake: None,
            wakes: 0,
        })
    }

    /// Boots a new phone and runs its init event.
    pub fn create(engine: &WasmEngine, image: &ImageHash, config: &VmConfig) -> Result<WasmPhone, EngineError> {
        WasmPhone::boot(engine, image, config, None)
    }

    /// Boots a fresh phone that continues an earlier life ([`vmi_engine::Engine::create_from`]).
    pub fn create_from(
        engine: &WasmEngine,
        image: &ImageHash,
        carried: &Carryover,
        config: &VmConfig,
    ) -> Result<WasmPhone, EngineError> {
        WasmPhone::boot(engine, image, config, Some(carried))
    }

    /// Boots a new image version for a phone whose old state is `chain`: only the
    /// persistent key-value store crosses; the new image's init reads the user's data
    /// back from it.
    pub fn upgrade(
        engine: &WasmEngine,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<WasmPhone, EngineError> {
        let last = chain.last().ok_or(EngineError::EmptyChain)?;
        let limits = Limits { max_memory_bytes: config.memory_limit_bytes, ..Limits::default() };
        let view = SnapshotView::parse(last, &limits)?;
        if view.header.engine != ENGINE_NAME {
            return Err(vmi_snapshot::SnapshotError::WrongEngine {
                expected: ENGINE_NAME.to_string(),
                found: view.header.engine.clone(),
            }
            .into());
        }
        let carried =
            vmi_guest_abi::carryover_of_host_state(view.host_state, view.header.virtual_ns, view.header.wall_ns)?;
        WasmPhone::boot(engine, image, config, Some(&carried))
    }

    fn boot(
        engine: &WasmEngine,
        image: &ImageHash,
        config: &VmConfig,
        carried: Option<&Carryover>,
    ) -> Result<WasmPhone, EngineError> {
        let image = engine.loaded(image)?;
        check_config(engine, config, &image)?;
        let seed = match config.rng_seed {
            Some(seed) => seed,
            None => secure_seed()?,
        };
        let mut host = Host::new(engine.clock.clone(), seed, config.memory_limit_bytes);
        if let Some(carried) = carried {
            host.take_over(carried).map_err(|e| EngineError::Config(format!("carried state refused: {e}")))?;
        }
        let inst = instantiate(engine, &image, host)?;
        let on_init = inst.on_init.clone();
        let mut phone = WasmPhone::assemble(engine, image, inst, config)?;
        let (w, h) = (config.width as i32, config.height as i32);
        phone.run(|store| on_init.call(store, (w, h))).map_err(EngineError::Start)?;
        phone.retrack();
        Ok(phone)
    }

    /// Brings a phone back from a snapshot chain.
    pub fn restore(
        engine: &WasmEngine,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<WasmPhone, EngineError> {
        check_config(engine, config, engine.loaded(image)?.as_ref())?;
        let Some(last_bytes) = chain.last() else { return Err(EngineError::EmptyChain) };
        // The last snapshot's id only names the restored state; nothing is checked against
        // it. Hashing it (a millisecond per few MiB) runs on another core while the pages
        // are laid down.
        std::thread::scope(|scope| {
            let last_id = scope.spawn(|| SnapshotId::of(last_bytes));
            let mut phone = WasmPhone::restore_pages(engine, image, chain, config)?;
            let last_id = last_id.join().map_err(|_| EngineError::Config("snapshot hashing panicked".into()))?;
            if let Some(last) = phone.last_good.last_mut() {
                last.id = last_id;
            }
            phone.last_snapshot = Some(last_id);
            Ok(phone)
        })
    }

    fn restore_pages(
        engine: &WasmEngine,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<WasmPhone, EngineError> {
        let limits = Limits { max_memory_bytes: config.memory_limit_bytes, ..Limits::default() };
        let mut snapshots = Vec::with_capacity(chain.len());
        for (i, bytes) in chain.iter().enumerate() {
            // The last id is filled in by the caller; the chain check compares each
            // snapshot's parent with the id before it, never the last one's own id.
            let id = if i + 1 < chain.len() { SnapshotId::of(bytes) } else { SnapshotId([0; 32]) };
            snapshots.push((id, SnapshotView::parse(bytes, &limits)?));
        }
        let headers: Vec<(SnapshotId, &Header)> = snapshots.iter().map(|(id, s)| (*id, &s.header)).collect();
        vmi_snapshot::check_chain(&headers)?;
        let (last_id, last) = snapshots.last().ok_or(EngineError::EmptyChain)?;
        for (_, snap) in &snapshots {
            snap.header.check_compat(ENGINE_NAME, &image.0)?;
        }
        let image = engine.loaded(image)?;

        let mut host = Host::new(engine.clock.clone(), 1, config.memory_limit_bytes);
        host.load(&mut Reader::new(last.host_state))?;
        host.vclock = VirtualClock::resume(engine.clock.as_ref(), last.header.virtual_ns, last.header.wall_ns);
        let inst = instantiate(engine, &image, host)?;
        let mut phone = WasmPhone::assemble(engine, image, inst, config)?;

        // Grow to the snapshot's size, clear what instantiation wrote, lay the pages down.
        phone.grow_to(last.header.memory_bytes)?;
        phone.clear_image_data(snapshots.first().map(|(_, s)| s.pages.runs()).unwrap_or(&[]));
        let memory = phone.memory.data_mut(&mut phone.store);
        for (_, snap) in &snapshots {
            snap.pages.apply_to_parallel(memory, RESTORE_THREADS)?;
        }
        phone.set_globals(&last.globals)?;
        phone.last_snapshot = Some(*last_id);
        phone.last_good = chain
            .iter()
            .zip(&snapshots)
            .map(|(bytes, (id, s))| EncodedSnapshot {
                id: *id,
                parent: s.header.kind.parent(),
                bytes: bytes.to_vec(),
                pages: s.pages.page_count(),
            })
            .collect();
        phone.retrack();
        // Memory now equals the chain's last snapshot: deltas can start from here.
        phone.untracked = phone.tracked == (0, 0);
        Ok(phone)
    }

    /// Grows linear memory to `want` bytes (a snapshot's size).
    pub(crate) fn grow_to(&mut self, want: u64) -> Result<(), EngineError> {
        let have = self.memory.data_size(&self.store) as u64;
        if !want.is_multiple_of(WASM_PAGE) || want < have {
            return Err(vmi_snapshot::SnapshotError::Corrupt(format!(
                "memory size {want} is not a whole number of wasm pages at least the current {have}"
            ))
            .into());
        }
        if want > have {
            self.memory
                .grow(&mut self.store, (want - have) / WASM_PAGE)
                .map_err(|_| EngineError::Exhausted(format!("cannot grow memory to {want} bytes")))?;
        }
        Ok(())
    }

    /// Zeroes what instantiation wrote (the image's data segments), so memory holds only
    /// what the base snapshot lays down; faults in the pages that snapshot will write.
    pub(crate) fn clear_image_data(&mut self, base_runs: &[vmi_snapshot::PageRun]) {
        let memory = self.memory.data_mut(&mut self.store);
        populate(memory, base_runs);
        for range in &self.image.data_ranges {
            let (start, end) = (range.start as usize, (range.end as usize).min(memory.len()));
            if start < end {
                memory[start..end].fill(0);
            }
        }
    }

    /// Applies a snapshot's pages to memory.
    pub(crate) fn apply_pages(&mut self, pages: &vmi_snapshot::PagesView<'_>) -> Result<(), EngineError> {
        let memory = self.memory.data_mut(&mut self.store);
        pages.apply_to_parallel(memory, RESTORE_THREADS)?;
        Ok(())
    }

    /// Sets every captured global from a snapshot.
    pub(crate) fn set_globals(&mut self, values: &[GlobalValue]) -> Result<(), EngineError> {
        if values.len() != self.globals.len() {
            return Err(vmi_snapshot::SnapshotError::Corrupt(format!(
                "snapshot has {} globals, the image {}",
                values.len(),
                self.globals.len()
            ))
            .into());
        }
        for ((global, kind), value) in self.globals.iter().zip(values) {
            let val = match (kind, value) {
                (GlobalKind::I32, GlobalValue::I32(v)) => Val::I32(*v),
                (GlobalKind::I64, GlobalValue::I64(v)) => Val::I64(*v),
                (GlobalKind::F32, GlobalValue::F32(v)) => Val::F32(*v),
                (GlobalKind::F64, GlobalValue::F64(v)) => Val::F64(*v),
                _ => {
                    return Err(
                        vmi_snapshot::SnapshotError::Corrupt("global type differs from the image".into()).into()
                    );
                }
            };
            global.set(&mut self.store, val).map_err(|e| EngineError::Config(e.to_string()))?;
        }
        Ok(())
    }

    /// Instantiates `image` for a restore, with host state to be loaded later.
    pub(crate) fn blank(engine: &WasmEngine, image: &ImageHash, config: &VmConfig) -> Result<WasmPhone, EngineError> {
        let image = engine.loaded(image)?;
        check_config(engine, config, &image)?;
        let host = Host::new(engine.clock.clone(), 1, config.memory_limit_bytes);
        let inst = instantiate(engine, &image, host)?;
        WasmPhone::assemble(engine, image, inst, config)
    }

    /// Finishes a restore: host state and clock from the last snapshot, the chain kept as
    /// the last good one, dirty tracking started.
    pub(crate) fn finish_restore(
        &mut self,
        host_state: &[u8],
        header: &Header,
        chain: Vec<EncodedSnapshot>,
    ) -> Result<(), EngineError> {
        let clock = self.store.data().host.clock.clone();
        let host = &mut self.store.data_mut().host;
        host.load(&mut Reader::new(host_state))?;
        host.vclock = VirtualClock::resume(clock.as_ref(), header.virtual_ns, header.wall_ns);
        self.last_snapshot = chain.last().map(|s| s.id);
        self.last_good = chain;
        // Tracking armed while the chain was laid (a staged restore arms it at its first piece) stays armed:
        // re-arming over the whole memory is a long step of a migration's downtime. The pages laid count as
        // written, a superset the next snapshot sends again.
        self.retrack();
        self.untracked = self.tracked == (0, 0);
        Ok(())
    }

    /// Runs one guest call under the CPU budget; on a trap the phone is marked crashed.
    fn run(&mut self, call: impl FnOnce(&mut Store<StoreData>) -> wasmtime::Result<()>) -> Result<(), VmError> {
        if let VmStatus::Crashed { reason } = &self.status {
            return Err(VmError::Crashed(reason.clone()));
        }
        // Fuel only fails to set when fuel is off, and this engine always turns it on.
        let _ = self.store.set_fuel(self.budget);
        let result = call(&mut self.store);
        let left = self.store.get_fuel().unwrap_or(0);
        self.cpu_last = self.budget.saturating_sub(left);
        self.cpu_total += self.cpu_last;
        self.events += 1;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
                    VmError::CpuBudget { budget: self.budget }
                } else if self.store.data().host.hit_memory_limit {
                    VmError::MemoryLimit { limit: self.store.data().host.memory_limit }
                } else {
                    // One line for listings and terminals (the trap or the host's reason);
                    // the wasm backtrace goes to the log.
                    VmError::Trap(e.root_cause().to_string().split_whitespace().collect::<Vec<_>>().join(" "))
                };
                tracing::warn!(image = %self.info.image, "phone crashed: {err}");
                tracing::debug!(image = %self.info.image, "the crash in full: {e:#}");
                self.status = VmStatus::Crashed { reason: err.to_string() };
                Err(err)
            }
        }
    }

    /// Points the dirty tracker at the memory as it is now.
    pub(crate) fn retrack(&mut self) {
        let base = self.memory.data_ptr(&self.store) as usize;
        let len = self.memory.data_size(&self.store);
        if (base, len) == self.tracked {
            return;
        }
        if base != self.tracked.0 && self.tracked != (0, 0) {
            // Memory moved: anything may have changed since the last snapshot.
            self.untracked = true;
            self.written_since_wake = None;
        }
        // SAFETY: `base..base+len` is this phone's linear memory: private anonymous pages
        // (copy-on-write init is off) that stay mapped while the store lives, which
        // outlives the tracker (field order). No guest code runs between events, and no
        // reference into the memory is held across this call.
        let tracked = unsafe { self.tracker.track(base as *mut u8, len) };
        match tracked {
            Ok(()) => self.tracked = (base, len),
            Err(e) => {
                tracing::warn!("dirty tracking lost, next snapshot is full: {e}");
                self.untracked = true;
                self.tracked = (0, 0);
                self.written_since_wake = None;
            }
        }
    }

    fn deliver_raw(&mut self, kind: i32, a: i32, b: i32, c: i32) -> Result<(), VmError> {
        self.wake()?;
        let f = self.on_event.clone();
        let r = self.run(|store| f.call(store, (kind, a, b, c)));
        if r.is_ok() {
            self.retrack();
        }
        r
    }

    fn capture_globals(&mut self) -> Vec<GlobalValue> {
        self.globals
            .iter()
            .map(|(g, kind)| match (kind, g.get(&mut self.store)) {
                (GlobalKind::I32, Val::I32(v)) => GlobalValue::I32(v),
                (GlobalKind::I64, Val::I64(v)) => GlobalValue::I64(v),
                (GlobalKind::F32, Val::F32(v)) => GlobalValue::F32(v),
                (GlobalKind::F64, Val::F64(v)) => GlobalValue::F64(v),
                // The load-time check admits only these four types.
                (_, other) => unreachable!("global of unexpected type {other:?}"),
            })
            .collect()
    }

    /// A fresh tracker of this phone's kind, watching nothing yet.
    fn fresh_tracker(&self) -> Box<dyn DirtyTracker> {
        match self.tracker_kind {
            Some(kind) => dirty::new_tracker(kind).unwrap_or_else(|_| dirty::best_tracker()),
            None => dirty::best_tracker(),
        }
    }

    /// An empty store of this engine keeping `host`: what a hibernated phone holds.
    fn store_of(&self, host: Host) -> Store<StoreData> {
        Store::new(self.store.engine(), StoreData::new(host))
    }

    /// Takes the host state out of the store, leaving an empty one.
    fn take_host(&mut self) -> Host {
        let placeholder = Host::new(self.store.data().host.clock.clone(), 1, 0);
        let empty = self.store_of(placeholder);
        std::mem::replace(&mut self.store, empty).into_data().host
    }

    /// Brings a hibernated phone back: a fresh instance of its image, its pages and globals laid back, its
    /// host state as it was. A phone that is not asleep is left alone. If it cannot be woken (no instance slot
    /// free), it stays asleep, intact, and the error says why.
    fn wake(&mut self) -> Result<(), VmError> {
        let Some(asleep) = self.asleep.take() else { return Ok(()) };
        let host = self.take_host();
        let mut store = self.store_of(host);
        match instantiate_in(&mut store, &self.image) {
            Ok((memory, globals, on_event, _)) => {
                self.store = store;
                self.memory = memory;
                self.globals = globals;
                self.on_event = on_event;
            }
            Err(e) => {
                let host = store.into_data().host;
                self.store = self.store_of(host);
                self.asleep = Some(asleep);
                return Err(VmError::Abi(format!("cannot wake the phone: {e}")));
            }
        }
        if let Err(e) = self.lay_back(&asleep) {
            // Half laid back, the guest is not what it was: it must not run. Its last good chain (and the site's
            // durable copy) still brings it back, as after a crash.
            self.pages.release(&asleep.pages);
            tracing::error!(image = %self.info.image, "phone could not be woken: {e}");
            self.status = VmStatus::Crashed { reason: e.to_string() };
            return Err(e);
        }
        self.carried_dirty = asleep.dirty;
        self.kept_pages = Some(asleep.pages.to_vec());
        self.tracker = self.fresh_tracker();
        self.tracked = (0, 0);
        self.retrack();
        self.written_since_wake = (self.tracked != (0, 0)).then(Vec::new);
        self.wakes += 1;
        Ok(())
    }

    /// Lays a hibernated phone's pages and globals into its fresh instance.
    fn lay_back(&mut self, asleep: &Asleep) -> Result<(), VmError> {
        let want = (asleep.pages.len() * PAGE_SIZE) as u64;
        self.grow_to(want).map_err(|e| VmError::Abi(format!("cannot wake the phone: {e}")))?;
        let memory = self.memory.data_mut(&mut self.store);
        // What instantiation wrote (the data segments) goes; every other page of a fresh memory is zero already.
        for range in &self.image.data_ranges {
            let (start, end) = (range.start as usize, (range.end as usize).min(memory.len()));
            if start < end {
                memory[start..end].fill(0);
            }
        }
        populate_keyed(memory, &asleep.pages);
        if let Err(i) = self.pages.lay_out(&asleep.pages, memory) {
            return Err(VmError::Abi(format!("cannot wake the phone: page {i} is missing from the page store")));
        }
        self.store.data_mut().host.instantiated = true;
        self.set_globals(&asleep.globals).map_err(|e| VmError::Abi(format!("cannot wake the phone: {e}")))
    }

    /// The keys of every page of memory now, for hibernation. When every write since the phone woke was seen
    /// (`since`: the writes since the last collect), only the pages written are hashed again; the others keep the
    /// keys the phone woke from. New keys are taken before old ones are given back, so an unchanged page is never
    /// dropped and stored again.
    fn page_keys(&mut self, since: Option<Vec<u32>>) -> Vec<u32> {
        let memory = self.memory.data(&self.store);
        let page = |i: usize| &memory[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
        match (self.kept_pages.take(), self.written_since_wake.take(), since) {
            (Some(mut keys), Some(mut written), Some(since)) => {
                written.extend(since);
                written.sort_unstable();
                written.dedup();
                let held = keys.len();
                let mut stale = Vec::with_capacity(written.len());
                for i in written.into_iter().map(|i| i as usize).filter(|&i| i < held) {
                    stale.push(keys[i]);
                    keys[i] = self.pages.intern(page(i));
                }
                for i in held..memory.len() / PAGE_SIZE {
                    keys.push(self.pages.intern(page(i)));
                }
                self.pages.release(&stale);
                keys
            }
            (kept, _, _) => {
                let keys = (0..memory.len() / PAGE_SIZE).map(|i| self.pages.intern(page(i))).collect();
                if let Some(kept) = kept {
                    self.pages.release(&kept);
                }
                keys
            }
        }
    }

    /// At hibernation: when memory is what the last snapshot holds (nothing written since it, every write seen),
    /// the last good chain becomes that state's page keys (the hibernating phone's own, shared) and the little
    /// else it said: its bytes, megabytes for a full snapshot, are given back with the rest of the phone.
    fn keep_last_good_as_pages(&mut self, dirty: &[u32], pages: &Arc<[u32]>) {
        let Some(last) = self.last_good.last() else { return };
        if !dirty.is_empty() || self.untracked || self.precopy_round.is_some() {
            return;
        }
        let view = match vmi_snapshot::SnapshotView::parse(&last.bytes, &vmi_snapshot::Limits::default()) {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!("the last snapshot does not parse, it stays as bytes: {e}");
                return;
            }
        };
        if view.header.memory_bytes != (pages.len() * PAGE_SIZE) as u64 {
            return;
        }
        let kept = KeptSnapshot {
            id: last.id,
            header: view.header.clone(),
            globals: view.globals.clone(),
            host_state: view.host_state.to_vec(),
            pages: pages.clone(),
        };
        self.pages.retain(&kept.pages);
        if let Some(old) = self.last_good_base.replace(kept) {
            self.pages.release(&old.pages);
        }
        self.last_good.clear();
    }

    /// The mechanism finding written pages ("uffd-wp+pagemap-scan", "shadow-compare").
    pub fn dirty_mechanism(&self) -> &'static str {
        self.tracker.mechanism()
    }
}

/// Faults in, in one call, the pages a full snapshot is about to write: one
/// `MADV_POPULATE_WRITE` costs far less than a page fault per page. Best effort: on a
/// kernel without it the pages fault in as they are written.
fn populate(memory: &mut [u8], runs: &[vmi_snapshot::PageRun]) {
    #[cfg(target_os = "linux")]
    {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let base = memory.as_mut_ptr() as usize;
        for run in runs.iter().filter(|r| r.kind == vmi_snapshot::RunKind::Data) {
            let start = run.first as usize * PAGE_SIZE;
            let len = run.count as usize * PAGE_SIZE;
            if start + len > memory.len() {
                return;
            }
            // SAFETY: the range lies inside this phone's linear memory, a private
            // anonymous read-write mapping; populating it changes no contents.
            unsafe { libc::madvise((base + start) as *mut libc::c_void, len, MADV_POPULATE_WRITE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (memory, runs);
}

/// [`populate`] for a waking phone: the runs of pages `keys` fills (one key per page; zero pages stay unbacked).
fn populate_keyed(memory: &mut [u8], keys: &[u32]) {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < keys.len() {
        let start = i;
        let zero = keys[i] == crate::hibernate::ZERO_PAGE;
        while i < keys.len() && (keys[i] == crate::hibernate::ZERO_PAGE) == zero {
            i += 1;
        }
        if !zero {
            runs.push(vmi_snapshot::PageRun {
                first: start as u32,
                count: (i - start) as u32,
                kind: vmi_snapshot::RunKind::Data,
            });
        }
    }
    populate(memory, &runs);
}

fn check_config(engine: &WasmEngine, config: &VmConfig, image: &LoadedImage) -> Result<(), EngineError> {
    if config.width == 0 || config.height == 0 || config.width > MAX_SCREEN_SIDE || config.height > MAX_SCREEN_SIDE {
        let (w, h) = (config.width, config.height);
        return Err(EngineError::Config(format!("screen {w}x{h} is outside 1..={MAX_SCREEN_SIDE}")));
    }
    if config.cpu_budget_per_event == 0 {
        return Err(EngineError::Config("CPU budget per event must be above 0".into()));
    }
    // Refused, never silently lowered: a phone must get the memory it was promised.
    let cap = engine.config.max_memory_bytes;
    if config.memory_limit_bytes > cap {
        return Err(EngineError::Config(format!(
            "memory limit of {} is above this engine's cap of {}",
            mib(config.memory_limit_bytes),
            mib(cap)
        )));
    }
    let initial = image.info.initial_memory_bytes;
    if initial > config.memory_limit_bytes {
        return Err(EngineError::Config(format!(
            "image {} starts with {} of memory, above this phone's memory limit of {}",
            image.info.hash,
            mib(initial),
            mib(config.memory_limit_bytes)
        )));
    }
    Ok(())
}

/// A byte count for people: `"300 MiB (314572800 bytes)"`.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{} MiB ({bytes} bytes)", bytes as f64 / (1 << 20) as f64)
}

/// A seed from the host's secure random source, so that no two fresh phones share an RNG
/// stream (std has no public API for it; the kernel's device is ten lines).
fn secure_seed() -> Result<u64, EngineError> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| EngineError::Exhausted(format!("cannot seed the phone's RNG from /dev/urandom: {e}")))?;
    Ok(u64::from_le_bytes(bytes))
}

impl VirtualPhone for WasmPhone {
    fn info(&self) -> &VmInfo {
        &self.info
    }

    fn status(&self) -> &VmStatus {
        &self.status
    }

    fn deliver(&mut self, event: Event) -> Result<(), VmError> {
        let mailbox_len = self.store.data().host.mailbox.len();
        match raw_event(event, mailbox_len, self.image.info.abi_version) {
            Some([kind, a, b, c]) => self.deliver_raw(kind, a, b, c),
            None => Ok(()),
        }
    }

    fn next_timer_ns(&self) -> Option<u64> {
        self.store.data().host.timers.values().copied().min()
    }

    fn fire_due_timers(&mut self) -> Result<usize, VmError> {
        let mut fired = 0;
        while fired < MAX_TIMERS_PER_CALL {
            let Some(id) = self.store.data_mut().host.take_due_timer() else { break };
            self.deliver_raw(TIMER_EVENT, id as i32, 0, 0)?;
            fired += 1;
        }
        Ok(fired)
    }

    fn now_ns(&self) -> u64 {
        self.store.data().host.now_ns()
    }

    fn frame(&mut self) -> Result<Frame<'_>, VmError> {
        self.wake()?;
        let (width, height) = (self.info.width, self.info.height);
        let host = &mut self.store.data_mut().host;
        let damage = std::mem::take(&mut host.damage);
        let Some(fb) = host.framebuffer else {
            return Ok(Frame { width, height, rgba: &[], damage: Vec::new() });
        };
        let data = self.memory.data(&self.store);
        let start = fb.ptr as usize;
        let end = start + fb.width as usize * fb.height as usize * 4;
        if end > data.len() {
            return Err(VmError::Abi(format!("framebuffer at {start:#x}..{end:#x} is outside memory")));
        }
        Ok(Frame { width: fb.width, height: fb.height, rgba: &data[start..end], damage })
    }

    fn take_notifications(&mut self) -> Vec<Notification> {
        self.store.data_mut().host.notifications.drain(..).collect()
    }

    fn take_clipboard(&mut self) -> Option<String> {
        self.store.data_mut().host.clipboard.take()
    }

    fn push_mail(&mut self, mail: Mail) -> Result<(), VmError> {
        use vmi_guest_abi::host::{MAX_MAIL_BODY, MAX_MAIL_FIELD, MAX_MAILBOX_BYTES};
        if mail.from.len() > MAX_MAIL_FIELD || mail.subject.len() > MAX_MAIL_FIELD || mail.body.len() > MAX_MAIL_BODY {
            return Err(VmError::TooLarge(format!(
                "mail fields are limited to {MAX_MAIL_FIELD} bytes (sender, subject) and {MAX_MAIL_BODY} (body)"
            )));
        }
        let mailbox = &mut self.store.data_mut().host.mailbox;
        let size = |m: &Mail| m.from.len() + m.subject.len() + m.body.len();
        let waiting: usize = mailbox.iter().map(size).sum();
        if mailbox.len() >= MAX_MAILBOX || waiting + size(&mail) > MAX_MAILBOX_BYTES {
            return Err(VmError::Full("mailbox"));
        }
        mailbox.push_back(mail);
        Ok(())
    }

    fn mailbox_len(&self) -> usize {
        self.store.data().host.mailbox.len()
    }

    fn kv_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store.data().host.kv.get(key).cloned()
    }

    fn carryover(&self) -> Carryover {
        self.store.data().host.carryover()
    }

    fn take_logs(&mut self) -> Vec<LogLine> {
        let host = &mut self.store.data_mut().host;
        let now = host.now_ns();
        host.logs.take(now)
    }

    fn snapshot(&mut self, request: SnapshotRequest) -> Result<EncodedSnapshot, VmError> {
        if let VmStatus::Crashed { reason } = &self.status {
            return Err(VmError::Crashed(reason.clone()));
        }
        self.wake()?;
        self.retrack();
        let mut dirty = std::mem::take(&mut self.dirty_scratch);
        dirty.clear();
        let collected = self.tracker.collect(&mut dirty);
        match (&collected, self.written_since_wake.as_mut()) {
            (Ok(()), Some(written)) => written.extend_from_slice(&dirty),
            _ => self.written_since_wake = None,
        }
        if !self.carried_dirty.is_empty() {
            // Written before the phone hibernated, and not yet in a snapshot.
            dirty.append(&mut self.carried_dirty);
            dirty.sort_unstable();
            dirty.dedup();
        }
        // A delta is only possible when every write since the last snapshot was seen.
        let parent = if !self.untracked && collected.is_ok() { self.last_snapshot } else { None };
        let kind = match (request, parent, self.precopy_round) {
            (SnapshotRequest::Full, _, _) => SnapshotKind::Full,
            (SnapshotRequest::Incremental, Some(parent), _) => SnapshotKind::Incremental { parent },
            (SnapshotRequest::Incremental, None, _) => SnapshotKind::Full,
            (SnapshotRequest::PreCopy, Some(parent), Some(round)) => {
                SnapshotKind::PreCopy { round: round + 1, parent: Some(parent) }
            }
            (SnapshotRequest::PreCopy | SnapshotRequest::PreCopyStart, _, _) => {
                SnapshotKind::PreCopy { round: 0, parent: None }
            }
        };
        let globals = self.capture_globals();
        let host = &self.store.data().host;
        let mut w = Writer::default();
        host.save(&mut w);
        let host_state = w.into_inner();
        let memory = self.memory.data(&self.store);
        let header = Header {
            engine: ENGINE_NAME.to_string(),
            image_hash: self.info.image.0,
            memory_bytes: memory.len() as u64,
            kind,
            virtual_ns: host.now_ns(),
            wall_ns: host.clock.wall_ns(),
        };
        let encoded = match kind.parent() {
            Some(_) => vmi_snapshot::encode_dirty(&header, &globals, &host_state, memory, &dirty),
            None => vmi_snapshot::encode_full(&header, &globals, &host_state, memory),
        };
        self.dirty_scratch = dirty;
        if let Err(e) = collected {
            // The tracker stopped; start it afresh now, so its clean point is this full
            // snapshot and not some later event.
            tracing::warn!("dirty tracking failed, this snapshot is full: {e}");
            self.tracked = (0, 0);
            self.retrack();
        }
        let encoded = encoded.map_err(|e| VmError::Snapshot(e.to_string()))?;
        let (id, bytes, page_count) = (encoded.id, encoded.bytes, encoded.page_count);
        let parent = kind.parent();
        if parent.is_none() {
            self.last_good.clear();
            if let Some(base) = self.last_good_base.take() {
                self.pages.release(&base.pages);
            }
        }
        self.precopy_round = match kind {
            SnapshotKind::PreCopy { round, .. } => Some(round),
            _ => None,
        };
        self.untracked = false;
        self.last_snapshot = Some(id);
        let encoded = EncodedSnapshot { id, parent, bytes, pages: page_count };
        self.last_good.push(encoded.clone());
        Ok(encoded)
    }

    fn last_snapshot_id(&self) -> Option<SnapshotId> {
        self.last_good.last().map(|s| s.id).or(self.last_good_base.as_ref().map(|b| b.id))
    }

    fn last_good_chain(&self) -> Result<Vec<Vec<u8>>, VmError> {
        let Some(base) = &self.last_good_base else {
            return Ok(self.last_good.iter().map(|s| s.bytes.clone()).collect());
        };
        // The kept state with the snapshots after it laid on, as one full snapshot (the kept state's own bytes
        // are gone, so the chain could not name it as their parent).
        let bad = |e: String| VmError::Snapshot(format!("the last good state cannot be rebuilt: {e}"));
        let mut memory = vec![0u8; base.pages.len() * PAGE_SIZE];
        if let Err(i) = self.pages.lay_out(&base.pages, &mut memory) {
            return Err(bad(format!("page {i} is missing from the page store")));
        }
        let (mut header, mut globals, mut host_state) =
            (base.header.clone(), base.globals.clone(), base.host_state.clone());
        for snapshot in &self.last_good {
            let view = SnapshotView::parse(&snapshot.bytes, &Limits::default()).map_err(|e| bad(e.to_string()))?;
            memory.resize(usize::try_from(view.header.memory_bytes).map_err(|e| bad(e.to_string()))?, 0);
            view.pages.to_pages().and_then(|p| p.apply_to(&mut memory)).map_err(|e| bad(e.to_string()))?;
            (header, globals, host_state) = (view.header, view.globals, view.host_state.to_vec());
        }
        header.kind = SnapshotKind::Full;
        let full =
            vmi_snapshot::encode_full(&header, &globals, &host_state, &memory).map_err(|e| bad(e.to_string()))?;
        Ok(vec![full.bytes])
    }

    fn usage(&self) -> ResourceUsage {
        let host = &self.store.data().host;
        ResourceUsage {
            // A hibernated phone holds no memory of its own (its pages are in the engine's store).
            memory_bytes: if self.asleep.is_some() { 0 } else { self.memory.data_size(&self.store) as u64 },
            events: self.events,
            cpu_last_event: self.cpu_last,
            cpu_total: self.cpu_total,
            timers: host.timers.len() as u32,
            pending_notifications: host.notifications.len() as u32,
            kv_bytes: host.kv_bytes as u64,
            wakes: self.wakes,
        }
    }

    fn hibernate(&mut self) -> Result<bool, VmError> {
        if self.asleep.is_some() || matches!(self.status, VmStatus::Crashed { .. }) {
            return Ok(false);
        }
        // Pages written since the last snapshot must still reach the next one.
        let mut dirty = std::mem::take(&mut self.carried_dirty);
        let mut since = Vec::new();
        let seen = !self.untracked && self.tracker.collect(&mut since).is_ok();
        if seen {
            dirty.extend_from_slice(&since);
        } else if !self.untracked {
            tracing::warn!("dirty tracking failed at hibernation, the next snapshot is full");
            self.untracked = true;
        }
        dirty.sort_unstable();
        dirty.dedup();
        let globals = self.capture_globals();
        let pages: Arc<[u32]> = self.page_keys(seen.then_some(since)).into();
        self.keep_last_good_as_pages(&dirty, &pages);
        // A scratch list sized for a whole memory's pages goes with the memory.
        self.dirty_scratch = Vec::new();
        // The tracker watched this memory: it goes first (field order), for one that holds nothing while the phone
        // sleeps; then the instance with its store.
        self.tracker = dirty::idle_tracker();
        self.tracked = (0, 0);
        let host = self.take_host();
        self.store = self.store_of(host);
        self.asleep = Some(Asleep { pages, globals, dirty });
        Ok(true)
    }

    fn resident(&self) -> bool {
        self.asleep.is_none()
    }
}

// Page size of the snapshot format and of dirty tracking must agree.
const _: () = assert!(PAGE_SIZE == 4096);
