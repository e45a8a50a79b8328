//! Hibernation: a phone at rest kept as pages in a store every phone of the engine shares.
//!
//! Most phones are idle most of the time. A hibernated phone gives back its instance, its linear memory and its
//! framebuffer; what it was is a list of page keys into the [`PageStore`] (a page every phone of the image has,
//! the code's data or a blank screen's rows, is stored once, compressed), its mutable globals, and its host state,
//! which stays with the phone: its timers, mailbox and store answer without waking it. Anything that needs the
//! guest (an event, a frame, a snapshot) wakes it first, transparently: a fresh instance from the same image with
//! the pages laid back, so everything the phone does is unchanged.

use std::collections::HashMap;
use std::sync::Mutex;

use vmi_snapshot::{GlobalValue, PAGE_SIZE};

/// The key of an all-zero page, which is not stored.
pub const ZERO_PAGE: u32 = u32::MAX;

/// Pages of hibernated phones, each distinct page once, lz4-compressed, counted by reference.
#[derive(Default)]
pub struct PageStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    index: HashMap<[u8; 32], u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    stored_bytes: usize,
}

struct Slot {
    hash: [u8; 32],
    refs: u32,
    bytes: Box<[u8]>,
}

/// What a [`PageStore`] holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageStoreStats {
    /// Distinct pages stored.
    pub pages: usize,
    /// Their compressed bytes (the store's own bookkeeping aside).
    pub bytes: usize,
    /// References to them from hibernated phones.
    pub refs: u64,
}

impl PageStore {
    /// An empty store.
    pub fn new() -> PageStore {
        PageStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change under the lock is a few field updates that cannot panic halfway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of `page` (a whole 4 KiB page), stored if new, its count raised.
    pub fn intern(&self, page: &[u8]) -> u32 {
        debug_assert_eq!(page.len(), PAGE_SIZE);
        if vmi_snapshot::is_zero_page(page) {
            return ZERO_PAGE;
        }
        let hash = *blake3::hash(page).as_bytes();
        let mut inner = self.lock();
        if let Some(&key) = inner.index.get(&hash) {
            if let Some(slot) = inner.slots[key as usize].as_mut() {
                slot.refs += 1;
            }
            return key;
        }
        let bytes = lz4_flex::block::compress(page).into_boxed_slice();
        inner.stored_bytes += bytes.len();
        let slot = Some(Slot { hash, refs: 1, bytes });
        let key = match inner.free.pop() {
            Some(key) => {
                inner.slots[key as usize] = slot;
                key
            }
            None => {
                inner.slots.push(slot);
                (inner.slots.len() - 1) as u32
            }
        };
        inner.index.insert(hash, key);
        key
    }

    /// Copies the page under `key` into `out` (a whole page); a zero page is written as zeros.
    pub fn read(&self, key: u32, out: &mut [u8]) -> bool {
        if key == ZERO_PAGE {
            out.fill(0);
            return true;
        }
        let inner = self.lock();
        let Some(Some(slot)) = inner.slots.get(key as usize) else { return false };
        matches!(lz4_flex::block::decompress_into(&slot.bytes, out), Ok(n) if n == PAGE_SIZE)
    }

    /// Takes one more reference to each of `keys` (held elsewhere already).
    pub fn retain(&self, keys: &[u32]) {
        let mut inner = self.lock();
        for &key in keys.iter().filter(|&&k| k != ZERO_PAGE) {
            if let Some(Some(slot)) = inner.slots.get_mut(key as usize) {
                slot.refs += 1;
            }
        }
    }

    /// Drops one reference to each of `keys`; a page nobody refers to any more is freed.
    pub fn release(&self, keys: &[u32]) {
        let mut inner = self.lock();
        for &key in keys.iter().filter(|&&k| k != ZERO_PAGE) {
            let Some(Some(slot)) = inner.slots.get_mut(key as usize) else { continue };
            slot.refs -= 1;
            if slot.refs == 0 {
                let (hash, len) = (slot.hash, slot.bytes.len());
                inner.slots[key as usize] = None;
                inner.index.remove(&hash);
                inner.stored_bytes -= len;
                inner.free.push(key);
            }
        }
    }

    /// What the store holds now.
    pub fn stats(&self) -> PageStoreStats {
        let inner = self.lock();
        let refs = inner.slots.iter().flatten().map(|s| u64::from(s.refs)).sum();
        PageStoreStats { pages: inner.index.len(), bytes: inner.stored_bytes, refs }
    }
}

/// A hibernated phone's guest state: its memory as page keys, and its globals.
pub(crate) struct Asleep {
    /// One key per 4 KiB page of linear memory ([`ZERO_PAGE`] for a page of zeros); shared with the phone's kept
    /// last good state when that is the same memory.
    pub pages: std::sync::Arc<[u32]>,
    /// The mutable globals, in the image's order.
    pub globals: Vec<GlobalValue>,
    /// Pages written since the phone's last snapshot and before it hibernated: its next incremental snapshot
    /// must still carry them.
    pub dirty: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_pages_are_stored_once_and_freed_with_their_last_reference() {
        let store = PageStore::new();
        let mut page = vec![7u8; PAGE_SIZE];
        let a = store.intern(&page);
        let b = store.intern(&page);
        assert_eq!(a, b);
        assert_eq!(store.intern(&vec![0u8; PAGE_SIZE]), ZERO_PAGE, "zero pages are not stored");
        page[100] = 8;
        let c = store.intern(&page);
        assert_ne!(a, c);
        assert_eq!(store.stats().pages, 2);
        assert_eq!(store.stats().refs, 3);

        let mut out = vec![0u8; PAGE_SIZE];
        assert!(store.read(c, &mut out));
        assert_eq!(out, page);
        assert!(store.read(ZERO_PAGE, &mut out) && out.iter().all(|&b| b == 0));

        store.release(&[a]);
        assert_eq!(store.stats().pages, 2, "one reference to the first page is left");
        store.release(&[a, c, ZERO_PAGE]);
        assert_eq!(store.stats(), PageStoreStats::default());
        assert!(!store.read(a, &mut out), "a freed key reads nothing");
        // A freed slot is reused.
        assert!([a, c].contains(&store.intern(&page)));
    }
}
