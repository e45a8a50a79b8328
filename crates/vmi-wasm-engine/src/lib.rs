//! # vmi-wasm-engine: each virtual phone is a WebAssembly micro-VM
//!
//! The default [`vmi_engine::Engine`]. An image is checked and instrumented once
//! ([`image`]), compiled once by wasmtime (or loaded precompiled from a cache directory)
//! and pre-linked into an [`wasmtime::InstancePre`]; each phone is then one cheap
//! instantiation from the pooling allocator with its own [`wasmtime::Store`].
//!
//! ## State capture
//! A phone's whole state is its linear memory, its mutable globals (exported at load time
//! by the instrumentation, so the stack pointer is included) and the host state in
//! [`host::Host`]. Tables are never mutated (the load-time check refuses images that
//! could), so instantiating the image rebuilds them exactly. Snapshots are taken between
//! events, when no guest code runs.
//!
//! ## Dirty pages
//! Incremental snapshots carry only the 4 KiB pages written since the previous one. The
//! [`dirty`] module tracks them with userfaultfd asynchronous write-protection read back by
//! `PAGEMAP_SCAN` where the kernel has it, and by comparing against a shadow copy where it
//! does not.
//!
//! ## Limits
//! Each phone has a memory cap (a [`wasmtime::ResourceLimiter`]) and a CPU budget per
//! event (fuel). A guest that traps or runs out of fuel is marked crashed; other phones on
//! the engine are separate stores and carry on.

pub mod dirty;
pub mod guest_log;
pub mod host;
pub mod image;
mod persist;
mod phone;
mod restore;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmi_engine::{Carryover, Clock, Engine, EngineError, ImageHash, ImageInfo, SystemClock, VirtualPhone, VmConfig};
use wasmtime::{InstancePre, Linker, Module};

pub use dirty::TrackerKind;
pub use host::{carryover_of_host_state, kv_of_host_state};
pub use phone::WasmPhone;
pub use restore::WasmRestore;

/// Name recorded in snapshots made by this engine.
pub const ENGINE_NAME: &str = "wasm";

/// Errors inside this engine; they surface through [`EngineError`] and
/// [`vmi_engine::VmError`].
#[derive(Debug, thiserror::Error)]
pub enum WasmEngineError {
    /// The host-state blob of a snapshot is malformed.
    #[error("host state: {0}")]
    HostState(String),
    /// wasmtime could not be configured.
    #[error("engine setup failed: {0}")]
    Setup(String),
}

impl From<WasmEngineError> for EngineError {
    fn from(e: WasmEngineError) -> Self {
        match e {
            WasmEngineError::HostState(m) => EngineError::Snapshot(vmi_snapshot::SnapshotError::Corrupt(m)),
            WasmEngineError::Setup(m) => EngineError::Config(m),
        }
    }
}

/// How to build a [`WasmEngine`].
#[derive(Clone, Debug)]
pub struct WasmEngineConfig {
    /// Most phones alive at once (the pooling allocator reserves this many slots; 0
    /// turns pooling off and allocates on demand).
    pub max_vms: u32,
    /// Largest memory of any phone, in bytes (the per-phone cap is in [`VmConfig`]).
    pub max_memory_bytes: u64,
    /// Directory for compiled images, so a restart does not compile again.
    pub cache_dir: Option<PathBuf>,
    /// How to find written pages.
    pub dirty_tracking: Option<TrackerKind>,
}

impl Default for WasmEngineConfig {
    fn default() -> Self {
        WasmEngineConfig { max_vms: 1100, max_memory_bytes: 256 << 20, cache_dir: None, dirty_tracking: None }
    }
}

/// A loaded image: checked, instrumented, compiled and linked.
pub(crate) struct LoadedImage {
    pub info: ImageInfo,
    pub pre: InstancePre<host::Host>,
    pub globals: Vec<(String, image::GlobalKind)>,
    pub data_ranges: Vec<std::ops::Range<u64>>,
}

/// The WebAssembly micro-VM engine.
pub struct WasmEngine {
    pub(crate) wasmtime: wasmtime::Engine,
    linker: Linker<host::Host>,
    images: Mutex<HashMap<ImageHash, Arc<LoadedImage>>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: WasmEngineConfig,
}

impl WasmEngine {
    /// An engine on the system clock with default settings.
    pub fn new() -> Result<WasmEngine, EngineError> {
        WasmEngine::with_config(WasmEngineConfig::default(), SystemClock::shared())
    }

    /// An engine with explicit settings and clock.
    pub fn with_config(config: WasmEngineConfig, clock: Arc<dyn Clock>) -> Result<WasmEngine, EngineError> {
        let wasmtime = build_wasmtime(&config).or_else(|e| {
            // A machine that cannot reserve the pool (small address-space limits) still
            // runs phones, just with on-demand allocation.
            tracing::warn!("pooling allocator unavailable ({e}); allocating on demand");
            build_wasmtime(&WasmEngineConfig { max_vms: 0, ..config.clone() })
        })?;
        let mut linker = Linker::new(&wasmtime);
        host::link(&mut linker).map_err(|e| EngineError::Config(e.to_string()))?;
        Ok(WasmEngine { wasmtime, linker, images: Mutex::new(HashMap::new()), clock, config })
    }

    pub(crate) fn loaded(&self, hash: &ImageHash) -> Result<Arc<LoadedImage>, EngineError> {
        self.images_lock().get(hash).cloned().ok_or_else(|| EngineError::UnknownImage(hash.to_hex()))
    }

    fn images_lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImageHash, Arc<LoadedImage>>> {
        // A panic while holding this lock cannot leave the map half-updated (one insert).
        self.images.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn compile(&self, hash: &ImageHash, instrumented: &[u8]) -> Result<Module, EngineError> {
        let compile = || Module::new(&self.wasmtime, instrumented).map_err(|e| EngineError::Compile(e.into()));
        let Some(dir) = &self.config.cache_dir else { return compile() };
        let mut fingerprint = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.wasmtime.precompile_compatibility_hash(), &mut fingerprint);
        let path = dir.join(format!("{}-{:016x}.cwasm", hash.to_hex(), std::hash::Hasher::finish(&fingerprint)));
        // Read into memory rather than mapped: a file changed under a mapping would fault.
        if let Ok(bytes) = std::fs::read(&path) {
            // SAFETY: the file is named by the image's content hash and the engine's
            // compatibility hash and was written by `Module::serialize` below into a
            // directory this engine owns; wasmtime checks its header and version first.
            match unsafe { Module::deserialize(&self.wasmtime, &bytes) } {
                Ok(module) => return Ok(module),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable compiled image: {e}"),
            }
        }
        let module = compile()?;
        if let Ok(bytes) = module.serialize() {
            let tmp = path.with_extension("tmp");
            let written = std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&tmp, bytes))
                .and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), "could not cache compiled image: {e}");
            }
        }
        Ok(module)
    }
}

fn build_wasmtime(config: &WasmEngineConfig) -> Result<wasmtime::Engine, EngineError> {
    let mut c = wasmtime::Config::new();
    c.consume_fuel(true)
        // Memory must be plain anonymous pages: dirty tracking write-protects them, and a
        // copy-on-write file mapping of the image would hide writes from it.
        .memory_init_cow(false)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        // Fixed-width SIMD holds no state beyond locals and memory, so it snapshots like
        // any code; relaxed SIMD must give the same answers on every host a phone may
        // migrate to.
        .wasm_simd(true)
        .relaxed_simd_deterministic(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    if config.max_vms > 0 {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(config.max_vms)
            .total_memories(config.max_vms)
            .total_tables(config.max_vms)
            .max_memory_size(config.max_memory_bytes as usize);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    wasmtime::Engine::new(&c).map_err(|e| EngineError::Config(e.to_string()))
}

impl Engine for WasmEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn load_image(&self, bytes: &[u8]) -> Result<ImageInfo, EngineError> {
        let hash = ImageHash::of(bytes);
        if let Some(image) = self.images_lock().get(&hash) {
            return Ok(image.info.clone());
        }
        let prepared = image::prepare(bytes).map_err(|e| EngineError::ImageRefused(e.to_string()))?;
        let initial = prepared.memory_min_pages * 65536;
        if initial > self.config.max_memory_bytes {
            return Err(EngineError::ImageRefused(format!(
                "the image's initial memory of {} is above this engine's memory cap of {}",
                phone::mib(initial),
                phone::mib(self.config.max_memory_bytes)
            )));
        }
        let module = self.compile(&hash, &prepared.instrumented)?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| EngineError::Compile(e.into()))?;
        let abi_version = phone::probe_abi_version(self, &pre)?;
        if abi_version != 1 {
            return Err(EngineError::ImageRefused(format!(
                "image speaks guest ABI version {abi_version}; this engine speaks version 1"
            )));
        }
        let info = ImageInfo {
            hash,
            size_bytes: bytes.len() as u64,
            abi_version,
            initial_memory_bytes: prepared.memory_min_pages * 65536,
            max_memory_bytes: prepared.memory_max_pages.map(|p| p * 65536),
            captured_globals: prepared.globals.len() as u32,
            functions: prepared.functions,
            imports: prepared.imports,
            engine: ENGINE_NAME,
        };
        let loaded = Arc::new(LoadedImage {
            info: info.clone(),
            pre,
            globals: prepared.globals,
            data_ranges: prepared.data_ranges,
        });
        self.images_lock().insert(hash, loaded);
        tracing::info!(image = %hash, bytes = bytes.len(), "image loaded");
        Ok(info)
    }

    fn image(&self, hash: &ImageHash) -> Option<ImageInfo> {
        self.images_lock().get(hash).map(|i| i.info.clone())
    }

    fn create(&self, image: &ImageHash, config: &VmConfig) -> Result<Box<dyn VirtualPhone>, EngineError> {
        Ok(Box::new(WasmPhone::create(self, image, config)?))
    }

    fn restore(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        Ok(Box::new(WasmPhone::restore(self, image, chain, config)?))
    }

    fn upgrade(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        Ok(Box::new(WasmPhone::upgrade(self, image, chain, config)?))
    }

    fn create_from(
        &self,
        image: &ImageHash,
        carried: &Carryover,
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        Ok(Box::new(WasmPhone::create_from(self, image, carried, config)?))
    }

    fn begin_restore(
        &self,
        image: &ImageHash,
        config: &VmConfig,
    ) -> Result<Box<dyn vmi_engine::RestoreStage>, EngineError> {
        Ok(Box::new(WasmRestore::begin(self, image, config)?))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }
}
