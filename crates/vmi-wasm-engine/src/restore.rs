//! A restore that takes its snapshot chain piece by piece: the destination side of a
//! live migration applies pre-copy rounds while the source phone still runs, so that
//! only the final delta is applied in the downtime window.

use vmi_engine::{EncodedSnapshot, EngineError, ImageHash, RestoreStage, VirtualPhone, VmConfig};
use vmi_snapshot::{Header, Limits, SnapshotId, SnapshotView};

use crate::phone::WasmPhone;
use crate::{ENGINE_NAME, WasmEngine};

/// The wasm engine's [`RestoreStage`].
pub struct WasmRestore {
    phone: WasmPhone,
    image: ImageHash,
    limits: Limits,
    chain: Vec<(Header, EncodedSnapshot)>,
    last_globals: Vec<vmi_snapshot::GlobalValue>,
    last_host_state: Vec<u8>,
}

impl WasmRestore {
    /// Instantiates the image; pages come with [`RestoreStage::apply`].
    pub fn begin(engine: &WasmEngine, image: &ImageHash, config: &VmConfig) -> Result<WasmRestore, EngineError> {
        Ok(WasmRestore {
            phone: WasmPhone::blank(engine, image, config)?,
            image: *image,
            limits: Limits { max_memory_bytes: config.memory_limit_bytes, ..Limits::default() },
            chain: Vec::new(),
            last_globals: Vec::new(),
            last_host_state: Vec::new(),
        })
    }
}

impl RestoreStage for WasmRestore {
    fn apply(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let view = SnapshotView::parse(bytes, &self.limits)?;
        view.header.check_compat(ENGINE_NAME, &self.image.0)?;
        let id = SnapshotId::of(bytes);
        let mut headers: Vec<(SnapshotId, &Header)> = self.chain.iter().map(|(h, e)| (e.id, h)).collect();
        headers.push((id, &view.header));
        vmi_snapshot::check_chain(&headers)?;
        self.phone.grow_to(view.header.memory_bytes)?;
        // Dirty tracking is armed before the pages are laid, out of the downtime (it covers the whole memory).
        self.phone.retrack();
        if self.chain.is_empty() {
            self.phone.clear_image_data(view.pages.runs());
        }
        self.phone.apply_pages(&view.pages)?;
        self.last_globals = view.globals.clone();
        self.last_host_state = view.host_state.to_vec();
        let encoded = EncodedSnapshot {
            id,
            parent: view.header.kind.parent(),
            bytes: bytes.to_vec(),
            pages: view.pages.page_count(),
        };
        self.chain.push((view.header, encoded));
        Ok(())
    }

    fn applied(&self) -> usize {
        self.chain.len()
    }

    fn finish(mut self: Box<Self>) -> Result<Box<dyn VirtualPhone>, EngineError> {
        let Some((header, _)) = self.chain.last() else { return Err(EngineError::EmptyChain) };
        let header = header.clone();
        self.phone.set_globals(&self.last_globals)?;
        let chain = self.chain.drain(..).map(|(_, e)| e).collect();
        let host_state = std::mem::take(&mut self.last_host_state);
        self.phone.finish_restore(&host_state, &header, chain)?;
        Ok(Box::new(self.phone))
    }
}
