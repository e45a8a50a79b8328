//! Several engines behind one: a site runs WebAssembly phones and Linux phones side by side, each image going to
//! the engine whose magic it carries, each phone to the engine of its image.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{Carryover, Clock, Engine, EngineError, ImageHash, ImageInfo, RestoreStage, VirtualPhone, VmConfig};

/// Engines tried in order: the first is the default (its clock and page store are the set's).
pub struct Engines {
    engines: Vec<Arc<dyn Engine>>,
    by_image: Mutex<HashMap<ImageHash, usize>>,
}

impl Engines {
    /// A set of `first` and `more`: an image goes to the first engine that accepts its bytes.
    pub fn new(first: Arc<dyn Engine>, more: Vec<Arc<dyn Engine>>) -> Engines {
        let mut engines = vec![first];
        engines.extend(more);
        Engines { engines, by_image: Mutex::default() }
    }

    /// The engine with this name, if the set has one.
    pub fn named(&self, name: &str) -> Option<&Arc<dyn Engine>> {
        self.engines.iter().find(|e| e.name() == name)
    }

    fn of(&self, image: &ImageHash) -> Result<&Arc<dyn Engine>, EngineError> {
        let index = self.by_image.lock().unwrap_or_else(|p| p.into_inner()).get(image).copied();
        match index {
            Some(i) => Ok(&self.engines[i]),
            None => self
                .engines
                .iter()
                .find(|e| e.image(image).is_some())
                .ok_or_else(|| EngineError::UnknownImage(image.to_hex())),
        }
    }
}

impl Engine for Engines {
    fn name(&self) -> &'static str {
        self.engines[0].name()
    }

    fn page_store(&self) -> Option<(usize, usize)> {
        self.engines[0].page_store()
    }

    fn accepts(&self, bytes: &[u8]) -> bool {
        self.engines.iter().any(|e| e.accepts(bytes))
    }

    fn load_image(&self, bytes: &[u8]) -> Result<ImageInfo, EngineError> {
        // The last engine takes what no other claims, so its error names what is wrong with the bytes.
        let last = self.engines.len() - 1;
        let i = self.engines.iter().position(|e| e.accepts(bytes)).unwrap_or(last);
        let info = self.engines[i].load_image(bytes)?;
        self.by_image.lock().unwrap_or_else(|p| p.into_inner()).insert(info.hash, i);
        Ok(info)
    }

    fn image(&self, hash: &ImageHash) -> Option<ImageInfo> {
        self.engines.iter().find_map(|e| e.image(hash))
    }

    fn create(&self, image: &ImageHash, config: &VmConfig) -> Result<Box<dyn VirtualPhone>, EngineError> {
        self.of(image)?.create(image, config)
    }

    fn restore(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        self.of(image)?.restore(image, chain, config)
    }

    fn upgrade(
        &self,
        image: &ImageHash,
        chain: &[&[u8]],
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        let engine = self.of(image)?;
        // A chain of another engine cannot cross into this one: the new image starts from what carries over.
        let from = chain.first().and_then(|b| vmi_snapshot::Snapshot::peek_header(b).ok()).map(|h| h.engine);
        match from {
            Some(from) if from != engine.name() => Err(EngineError::Config(format!(
                "a phone of the {from} engine cannot be upgraded to an image of the {} engine",
                engine.name()
            ))),
            _ => engine.upgrade(image, chain, config),
        }
    }

    fn create_from(
        &self,
        image: &ImageHash,
        carried: &Carryover,
        config: &VmConfig,
    ) -> Result<Box<dyn VirtualPhone>, EngineError> {
        self.of(image)?.create_from(image, carried, config)
    }

    fn begin_restore(&self, image: &ImageHash, config: &VmConfig) -> Result<Box<dyn RestoreStage>, EngineError> {
        self.of(image)?.begin_restore(image, config)
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.engines[0].clock()
    }
}
