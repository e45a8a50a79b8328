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
//! [`vmi_guest_abi::host::Host`]. Tables are never mutated (the load-time check refuses images that
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
pub mod hibernate;
pub mod host;
mod phone;
mod restore;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmi_engine::{Carryover, Clock, Engine, EngineError, ImageHash, ImageInfo, SystemClock, VirtualPhone, VmConfig};
use wasmtime::{InstancePre, Linker, Module};

pub use dirty::TrackerKind;
pub use phone::WasmPhone;
pub use restore::WasmRestore;
pub use vmi_guest_abi::{carryover_of_host_state, guest_log, image, kv_of_host_state};

pub use vmi_guest_abi::ENGINE_NAME;

/// Errors inside this engine; they surface through [`EngineError`] and
/// [`vmi_engine::VmError`].
#[derive(Debug, thiserror::Error)]
pub enum WasmEngineError {
    /// wasmtime could not be configured.
    #[error("engine setup failed: {0}")]
    Setup(String),
}

impl From<WasmEngineError> for EngineError {
    fn from(e: WasmEngineError) -> Self {
        match e {
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
    pub pre: InstancePre<host::StoreData>,
    pub globals: Vec<(String, image::GlobalKind)>,
    pub data_ranges: Vec<std::ops::Range<u64>>,
}

/// The WebAssembly micro-VM engine.
pub struct WasmEngine {
    pub(crate) wasmtime: wasmtime::Engine,
    linker: Linker<host::StoreData>,
    images: Mutex<HashMap<ImageHash, Arc<LoadedImage>>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: WasmEngineConfig,
    /// Where hibernated phones keep their pages.
    pub(crate) pages: Arc<hibernate::PageStore>,
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
        let pages = Arc::new(hibernate::PageStore::new());
        Ok(WasmEngine { wasmtime, linker, images: Mutex::new(HashMap::new()), clock, config, pages })
    }

    /// What the hibernated phones' page store holds.
    pub fn page_store_stats(&self) -> hibernate::PageStoreStats {
        self.pages.stats()
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
        let key = match compiled_cache::key(dir) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "not using the compiled-image cache: {e}");
                return compile();
            }
        };
        let mut fingerprint = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.wasmtime.precompile_compatibility_hash(), &mut fingerprint);
        let path = dir.join(format!("{}-{:016x}.cwasm", hash.to_hex(), std::hash::Hasher::finish(&fingerprint)));
        // Read into memory rather than mapped: a file changed under a mapping would fault.
        if let Ok(sealed) = std::fs::read(&path) {
            match compiled_cache::open(&key, hash, &sealed) {
                // SAFETY: the bytes carry a MAC, keyed by a secret only this user can read, over this image's
                // hash and the bytes `Module::serialize` wrote below: they are this engine's own compilation of
                // this image, not code planted in the directory; wasmtime checks its header and version too.
                Some(bytes) => match unsafe { Module::deserialize(&self.wasmtime, bytes) } {
                    Ok(module) => return Ok(module),
                    Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable compiled image: {e}"),
                },
                None => tracing::warn!(path = %path.display(), "ignoring a compiled image whose MAC does not match"),
            }
        }
        let module = compile()?;
        if let Ok(bytes) = module.serialize() {
            let tmp = path.with_extension("tmp");
            let written = std::fs::write(&tmp, compiled_cache::seal(&key, hash, bytes))
                .and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), "could not cache compiled image: {e}");
            }
        }
        Ok(module)
    }
}

/// The compiled-image cache's integrity: native code is loaded from it only with a valid MAC (blake3, keyed by a
/// random key in the cache directory that only its owner can read), over the image hash and the code. A file
/// someone else put there, a file of another image renamed, or a damaged one is recompiled instead.
mod compiled_cache {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use vmi_engine::ImageHash;

    const KEY_FILE: &str = "cache.key";
    const MAC_BYTES: usize = 32;

    /// The cache's key, created (0600, in a 0700 directory) on first use. Refused when the directory is
    /// writable by others or the key readable by them.
    pub(crate) fn key(dir: &Path) -> Result<[u8; 32], String> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| e.to_string())?;
        let dir_mode = std::fs::metadata(dir).map_err(|e| e.to_string())?.permissions().mode();
        if dir_mode & 0o022 != 0 {
            return Err(format!("the directory is writable by others (mode {:o})", dir_mode & 0o777));
        }
        let path = dir.join(KEY_FILE);
        match std::fs::metadata(&path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!("{KEY_FILE} is readable by others (mode {mode:o})"));
                }
                let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                bytes.try_into().map_err(|_| format!("{KEY_FILE} is not a 32-byte key"))
            }
            Err(_) => {
                let mut key = [0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
                    .map_err(|e| format!("no randomness for the key: {e}"))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| e.to_string())?;
                file.write_all(&key).map_err(|e| e.to_string())?;
                Ok(key)
            }
        }
    }

    fn mac(key: &[u8; 32], image: &ImageHash, code: &[u8]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(key);
        hasher.update(&image.0);
        hasher.update(code);
        hasher.finalize()
    }

    /// `code` followed by its MAC.
    pub(crate) fn seal(key: &[u8; 32], image: &ImageHash, mut code: Vec<u8>) -> Vec<u8> {
        let tag = mac(key, image, &code);
        code.extend_from_slice(tag.as_bytes());
        code
    }

    /// The code of `sealed` if its MAC is right for `image` (compared in constant time).
    pub(crate) fn open<'a>(key: &[u8; 32], image: &ImageHash, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let split = sealed.len().checked_sub(MAC_BYTES)?;
        let (code, tag) = sealed.split_at(split);
        let tag: [u8; MAC_BYTES] = tag.try_into().ok()?;
        (mac(key, image, code) == blake3::Hash::from(tag)).then_some(code)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_sealed_module_opens_only_for_its_image_and_key() {
            let (key, other_key) = ([1u8; 32], [2u8; 32]);
            let (image, other_image) = (ImageHash([3; 32]), ImageHash([4; 32]));
            let sealed = seal(&key, &image, b"native code".to_vec());
            assert_eq!(open(&key, &image, &sealed), Some(&b"native code"[..]));
            assert_eq!(open(&key, &other_image, &sealed), None, "another image's code");
            assert_eq!(open(&other_key, &image, &sealed), None, "another key");
            let mut flipped = sealed.clone();
            flipped[0] ^= 1;
            assert_eq!(open(&key, &image, &flipped), None, "changed code");
            assert_eq!(open(&key, &image, b"short"), None);
        }

        #[test]
        fn a_key_others_can_read_or_a_directory_others_can_write_is_refused() {
            let dir = std::env::temp_dir().join(format!("vmi-cache-key-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let first = key(&dir).expect("created");
            assert_eq!(key(&dir).expect("read back"), first);
            let key_path = dir.join(KEY_FILE);
            assert_eq!(std::fs::metadata(&key_path).expect("key").permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(key(&dir).expect_err("0644 key").contains("readable by others"));
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            assert!(key(&dir).expect_err("0777 dir").contains("writable by others"));
            let _ = std::fs::remove_dir_all(&dir);
        }
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

/// The newest guest ABI version this engine speaks (docs/GUEST_ABI.md); it runs every older one too.
pub const GUEST_ABI_VERSION: u32 = 2;

impl Engine for WasmEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn accepts(&self, bytes: &[u8]) -> bool {
        bytes.starts_with(b"\0asm")
    }

    fn page_store(&self) -> Option<(usize, usize)> {
        let stats = self.pages.stats();
        Some((stats.pages, stats.bytes))
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
        if !(1..=GUEST_ABI_VERSION).contains(&abi_version) {
            return Err(EngineError::ImageRefused(format!(
                "image speaks guest ABI version {abi_version}; this engine speaks versions 1 to {GUEST_ABI_VERSION}"
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
