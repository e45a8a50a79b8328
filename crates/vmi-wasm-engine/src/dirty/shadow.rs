//! Shadow compare: a private copy of the tracked memory, compared page by page on every collect. Works on
//! any platform; costs a copy of the memory and a read of all of it per collect.

use super::{DirtyError, DirtyTracker, PAGE_SIZE, SHADOW_COMPARE, page_count};

/// Tracks by keeping a copy of the memory and comparing on every collect.
pub(super) struct ShadowTracker {
    /// The tracked region's start, or null when nothing is tracked.
    base: *const u8,
    /// The tracked region's length; `copy.len() == len`.
    len: usize,
    /// The memory as of the last `track` / `collect`.
    copy: Vec<u8>,
    /// Pages from here to the end were added by a grow and are dirty at the next collect.
    dirty_tail_from: Option<usize>,
}

// SAFETY: `base` is only an address into memory that the caller of `track` guarantees stays mapped until the
// next `track` or the drop, whichever thread the tracker is on; the tracker keeps no thread-bound state.
unsafe impl Send for ShadowTracker {}

impl ShadowTracker {
    pub(super) fn new() -> Self {
        Self { base: std::ptr::null(), len: 0, copy: Vec::new(), dirty_tail_from: None }
    }

    fn untrack(&mut self) {
        self.base = std::ptr::null();
        self.len = 0;
        self.copy = Vec::new();
        self.dirty_tail_from = None;
    }

    /// Appends `[base + from, base + to)` of the live memory to the copy.
    ///
    /// # Safety
    ///
    /// `[base + from, base + to)` must be readable and not written concurrently (the `track` contract).
    unsafe fn copy_live(&mut self, base: *const u8, from: usize, to: usize) -> Result<(), DirtyError> {
        self.copy.try_reserve_exact(to - from).map_err(DirtyError::ShadowAlloc)?;
        // SAFETY: the caller guarantees the range is mapped, readable and not being written.
        let live = unsafe { std::slice::from_raw_parts(base.add(from), to - from) };
        self.copy.extend_from_slice(live);
        Ok(())
    }
}

impl DirtyTracker for ShadowTracker {
    unsafe fn track(&mut self, base: *mut u8, len: usize) -> Result<(), DirtyError> {
        let grow = !self.base.is_null() && self.base == base.cast_const() && len > self.len;
        let result = page_count(base, len).and_then(|_| {
            if grow {
                let old_len = self.len;
                // SAFETY: `track`'s contract covers the whole new region, so its new tail too.
                unsafe { self.copy_live(base, old_len, len) }?;
                self.dirty_tail_from.get_or_insert(old_len / PAGE_SIZE);
            } else {
                self.copy.clear();
                self.dirty_tail_from = None;
                // SAFETY: `track`'s contract: the region is mapped, readable and quiescent.
                unsafe { self.copy_live(base, 0, len) }?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.base = base;
                self.len = len;
                Ok(())
            }
            Err(e) => {
                self.untrack();
                Err(e)
            }
        }
    }

    fn collect(&mut self, out: &mut Vec<u32>) -> Result<(), DirtyError> {
        if self.base.is_null() {
            return Err(DirtyError::NotTracking);
        }
        out.clear();
        let pages = self.len / PAGE_SIZE;
        let tail = self.dirty_tail_from.take().unwrap_or(pages);
        // SAFETY: `track`'s contract: `[base, base + len)` stays mapped and readable until the next `track` or
        // the drop, and the guest (the only writer) is quiescent during `collect`.
        let live = unsafe { std::slice::from_raw_parts(self.base, self.len) };
        for (page, (live, copy)) in live.chunks_exact(PAGE_SIZE).zip(self.copy.chunks_exact_mut(PAGE_SIZE)).enumerate()
        {
            // `==` on byte slices is `memcmp`/`bcmp`: vectorised, and it stops at the first difference.
            if page >= tail || live != copy {
                copy.copy_from_slice(live);
                out.push(page as u32);
            }
        }
        Ok(())
    }

    fn mechanism(&self) -> &'static str {
        SHADOW_COMPARE
    }
}
