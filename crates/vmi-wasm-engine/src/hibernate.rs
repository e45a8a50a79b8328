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
///
/// A page many phones share (the image's data, a blank screen's rows) is also kept plain, up to
/// [`PLAIN_BUDGET`]: every wake lays it back, and a copy costs a tenth of decompressing it.
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
    plain_bytes: usize,
}

struct Slot {
    hash: [u8; 32],
    refs: u32,
    bytes: Box<[u8]>,
    /// The page as it is, once [`PLAIN_AT_REFS`] phones refer to it (within [`PLAIN_BUDGET`]).
    plain: Option<Box<[u8]>>,
}

/// References from which a page is also kept plain.
pub const PLAIN_AT_REFS: u32 = 4;
/// Most bytes of plain pages a store keeps: 32,768 distinct shared pages, far more than an image's phones share.
pub const PLAIN_BUDGET: usize = 128 << 20;

impl Inner {
    /// One more reference to the page in `key`'s slot (present), kept plain once shared widely enough.
    fn refer(&mut self, key: u32) {
        let Inner { slots, plain_bytes, .. } = self;
        let Some(Some(slot)) = slots.get_mut(key as usize) else { return };
        slot.refs += 1;
        if slot.refs >= PLAIN_AT_REFS && slot.plain.is_none() && *plain_bytes + PAGE_SIZE <= PLAIN_BUDGET {
            let mut page = vec![0u8; PAGE_SIZE].into_boxed_slice();
            if matches!(lz4_flex::block::decompress_into(&slot.bytes, &mut page), Ok(n) if n == PAGE_SIZE) {
                slot.plain = Some(page);
                *plain_bytes += PAGE_SIZE;
            }
        }
    }

    /// Copies the page of `key` into `out`; false if there is none.
    fn copy_out(&self, key: u32, out: &mut [u8]) -> bool {
        let Some(Some(slot)) = self.slots.get(key as usize) else { return false };
        match &slot.plain {
            Some(plain) => {
                out.copy_from_slice(plain);
                true
            }
            None => matches!(lz4_flex::block::decompress_into(&slot.bytes, out), Ok(n) if n == PAGE_SIZE),
        }
    }
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
    /// Bytes of the pages also kept plain (shared by [`PLAIN_AT_REFS`] references or more).
    pub plain_bytes: usize,
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
            inner.refer(key);
            return key;
        }
        let bytes = lz4_flex::block::compress(page).into_boxed_slice();
        inner.stored_bytes += bytes.len();
        let slot = Some(Slot { hash, refs: 1, bytes, plain: None });
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
        self.lock().copy_out(key, out)
    }

    /// Lays the pages of `keys` into `memory` (one page per key, from its start), under one lock; the zero
    /// pages are left as they are (a fresh memory is zero). `Err(i)`: page `i` is not in the store.
    pub fn lay_out(&self, keys: &[u32], memory: &mut [u8]) -> Result<(), usize> {
        // A memory too short for the keys is missing the first page it has no room for.
        if memory.len() / PAGE_SIZE < keys.len() {
            return Err(memory.len() / PAGE_SIZE);
        }
        let inner = self.lock();
        for ((i, &key), out) in keys.iter().enumerate().zip(memory.chunks_exact_mut(PAGE_SIZE)) {
            if key != ZERO_PAGE && !inner.copy_out(key, out) {
                return Err(i);
            }
        }
        Ok(())
    }

    /// Takes one more reference to each of `keys` (held elsewhere already).
    pub fn retain(&self, keys: &[u32]) {
        let mut inner = self.lock();
        for &key in keys.iter().filter(|&&k| k != ZERO_PAGE) {
            inner.refer(key);
        }
    }

    /// Drops one reference to each of `keys`; a page nobody refers to any more is freed.
    pub fn release(&self, keys: &[u32]) {
        let mut inner = self.lock();
        for &key in keys.iter().filter(|&&k| k != ZERO_PAGE) {
            let Some(Some(slot)) = inner.slots.get_mut(key as usize) else { continue };
            slot.refs -= 1;
            if slot.refs == 0 {
                let (hash, len, plain) = (slot.hash, slot.bytes.len(), slot.plain.is_some());
                inner.slots[key as usize] = None;
                inner.index.remove(&hash);
                inner.stored_bytes -= len;
                if plain {
                    inner.plain_bytes -= PAGE_SIZE;
                }
                inner.free.push(key);
            }
        }
    }

    /// What the store holds now.
    pub fn stats(&self) -> PageStoreStats {
        let inner = self.lock();
        let refs = inner.slots.iter().flatten().map(|s| u64::from(s.refs)).sum();
        PageStoreStats { pages: inner.index.len(), bytes: inner.stored_bytes, refs, plain_bytes: inner.plain_bytes }
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

    #[test]
    fn a_widely_shared_page_is_also_kept_plain_and_reads_the_same() {
        let store = PageStore::new();
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        let key = store.intern(&page);
        store.retain(&vec![key; PLAIN_AT_REFS as usize - 2]);
        assert_eq!(store.stats().plain_bytes, 0, "not yet shared widely enough");
        assert_eq!(store.intern(&page), key);
        assert_eq!(store.stats().plain_bytes, PAGE_SIZE);
        // Laid out as it was, beside a zero page left alone and another copy.
        let mut memory = vec![9u8; 3 * PAGE_SIZE];
        memory[PAGE_SIZE..2 * PAGE_SIZE].fill(0);
        store.lay_out(&[key, ZERO_PAGE, key], &mut memory).expect("laid out");
        assert_eq!(&memory[..PAGE_SIZE], &page[..]);
        assert!(memory[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 0));
        assert_eq!(&memory[2 * PAGE_SIZE..], &page[..]);
        assert_eq!(store.lay_out(&[key, 12345], &mut memory), Err(1), "a key not in the store is named");
        assert_eq!(store.lay_out(&[key; 4], &mut memory), Err(3), "and a page the memory has no room for");
        store.release(&vec![key; PLAIN_AT_REFS as usize]);
        assert_eq!(store.stats(), PageStoreStats::default(), "the plain copy goes with the page");
    }
}
