//! Memory pages in a snapshot: sorted runs of zero or data pages.

use std::fmt;

use crate::{PAGE_SIZE, SnapshotError};

/// What the pages of a [`PageRun`] hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RunKind {
    /// The pages are all zero; no bytes are stored.
    Zero,
    /// The pages' bytes are stored (compressed in the file).
    Data,
}

/// Consecutive pages of one kind: pages `first .. first + count`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PageRun {
    /// Index of the first page.
    pub first: u32,
    /// Number of pages, at least 1.
    pub count: u32,
    /// Zero or data.
    pub kind: RunKind,
}

impl PageRun {
    /// Index one past the last page.
    pub fn end(&self) -> u64 {
        u64::from(self.first) + u64::from(self.count)
    }
}

/// Pages of memory, as sorted runs of page indices, each run all-zero or data.
///
/// Representation: the run list plus one contiguous `Vec<u8>` holding the raw bytes of
/// every data page in index order, so a data run's bytes are one slice. Building one
/// costs a copy of the data pages; the hot paths ([`encode_full`](crate::encode_full),
/// [`encode_dirty`](crate::encode_dirty) and [`SnapshotView`](crate::SnapshotView)) skip
/// it and compress from, or decompress into, the linear memory itself.
///
/// Runs are canonical: sorted, non-overlapping, and touching runs of the same kind merged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pages {
    runs: Vec<PageRun>,
    data: Vec<u8>,
}

impl Pages {
    /// No pages.
    pub fn new() -> Self {
        Pages::default()
    }

    /// Adds data page `index`.
    ///
    /// # Panics
    /// If `page` is not [`PAGE_SIZE`] bytes or `index` is not above every index pushed so far.
    pub fn push_data(&mut self, index: u32, page: &[u8]) {
        assert_eq!(page.len(), PAGE_SIZE, "a page is {PAGE_SIZE} bytes");
        self.push_run(index, RunKind::Data);
        self.data.extend_from_slice(page);
    }

    /// Adds page `index` as all zero.
    ///
    /// # Panics
    /// If `index` is not above every index pushed so far.
    pub fn push_zero(&mut self, index: u32) {
        self.push_run(index, RunKind::Zero);
    }

    fn push_run(&mut self, index: u32, kind: RunKind) {
        if let Some(last) = self.runs.last_mut() {
            assert!(u64::from(index) >= last.end(), "page {index} pushed after page {}", last.end() - 1);
            if last.kind == kind && last.end() == u64::from(index) && last.count < u32::MAX {
                last.count += 1;
                return;
            }
        }
        self.runs.push(PageRun { first: index, count: 1, kind });
    }

    /// Every non-zero page of `memory` (what a [`Full`](crate::SnapshotKind::Full) snapshot
    /// holds); zero pages are skipped.
    ///
    /// # Panics
    /// If `memory` is not a whole number of pages, or has 2³² pages or more.
    pub fn from_memory_full(memory: &[u8]) -> Pages {
        if let Err(why) = check_memory(memory) {
            panic!("{why}");
        }
        Pages::copy_runs(memory, scan_full(memory))
    }

    /// Pages `dirty` of `memory` (what an [`Incremental`](crate::SnapshotKind::Incremental)
    /// snapshot holds): the zero ones as zero pages, the others as data.
    ///
    /// # Panics
    /// If `memory` is not a whole number of pages, or `dirty` is not strictly increasing
    /// or names a page beyond `memory`.
    pub fn from_memory_dirty(memory: &[u8], dirty: &[u32]) -> Pages {
        match check_memory(memory).and_then(|()| scan_dirty(memory, dirty)) {
            Ok(runs) => Pages::copy_runs(memory, runs),
            Err(why) => panic!("{why}"),
        }
    }

    fn copy_runs(memory: &[u8], runs: Vec<PageRun>) -> Pages {
        let bytes: usize = data_runs(&runs).map(|r| r.count as usize * PAGE_SIZE).sum();
        let mut data = Vec::with_capacity(bytes);
        for run in data_runs(&runs) {
            data.extend_from_slice(&memory[run_range(run)]);
        }
        Pages { runs, data }
    }

    /// Builds pages from canonical runs and their data (checked by the caller).
    pub(crate) fn from_parts(runs: Vec<PageRun>, data: Vec<u8>) -> Pages {
        debug_assert_eq!(data.len(), data_runs(&runs).map(|r| r.count as usize * PAGE_SIZE).sum::<usize>());
        Pages { runs, data }
    }

    /// The raw bytes of all data pages, run after run.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }

    /// The runs, sorted by page index.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Pages recorded, zero or data.
    pub fn page_count(&self) -> usize {
        self.runs.iter().map(|r| r.count as usize).sum()
    }

    /// Pages recorded with data.
    pub fn data_pages(&self) -> usize {
        self.data.len() / PAGE_SIZE
    }

    /// Whether no page is recorded.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Writes the data pages into `memory` and zeroes the zero pages; other pages are left
    /// as they are (right for a delta, or a full snapshot into memory known to be zero).
    /// Fails, before writing anything, if a page lies beyond `memory`.
    pub fn apply_to(&self, memory: &mut [u8]) -> Result<(), SnapshotError> {
        self.apply(memory, false)
    }

    /// Like [`apply_to`](Self::apply_to), and also zeroes every page not recorded: makes
    /// `memory` exactly the memory of a full snapshot whatever it held before.
    pub fn apply_full_to(&self, memory: &mut [u8]) -> Result<(), SnapshotError> {
        self.apply(memory, true)
    }

    fn apply(&self, memory: &mut [u8], full: bool) -> Result<(), SnapshotError> {
        let mut offset = 0;
        apply_runs(&self.runs, memory, full, |run, dest| {
            dest.copy_from_slice(&self.data[offset..offset + dest.len()]);
            offset += run.count as usize * PAGE_SIZE;
            Ok(())
        })
    }

    /// Every recorded page in index order: its index, and its bytes or `None` for a zero page.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Option<&[u8]>)> + '_ {
        let mut offset = 0;
        self.runs.iter().flat_map(move |run| {
            let base = offset;
            if run.kind == RunKind::Data {
                offset += run.count as usize * PAGE_SIZE;
            }
            (0..run.count).map(move |i| {
                let page = match run.kind {
                    RunKind::Zero => None,
                    RunKind::Data => {
                        let at = base + i as usize * PAGE_SIZE;
                        Some(&self.data[at..at + PAGE_SIZE])
                    }
                };
                (run.first + i, page)
            })
        })
    }
}

impl fmt::Debug for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field("runs", &self.runs.len())
            .field("pages", &self.page_count())
            .field("data_pages", &self.data_pages())
            .finish()
    }
}

/// Whether `page` is all zero bytes (word compares, fast enough to scan memory at
/// several GB/s).
pub fn is_zero_page(page: &[u8]) -> bool {
    let (blocks, rest) = page.as_chunks::<256>();
    rest.iter().all(|&b| b == 0)
        && blocks.iter().all(|block| {
            let (words, _) = block.as_chunks::<8>();
            words.iter().fold(0u64, |acc, w| acc | u64::from_ne_bytes(*w)) == 0
        })
}

/// The data runs of `runs`.
pub(crate) fn data_runs(runs: &[PageRun]) -> impl Iterator<Item = &PageRun> {
    runs.iter().filter(|r| r.kind == RunKind::Data)
}

/// Byte range of a run in memory; the caller has checked it fits.
pub(crate) fn run_range(run: &PageRun) -> std::ops::Range<usize> {
    let start = run.first as usize * PAGE_SIZE;
    start..start + run.count as usize * PAGE_SIZE
}

/// Checks that `memory` is whole pages with indices that fit a `u32`.
pub(crate) fn check_memory(memory: &[u8]) -> Result<(), &'static str> {
    if !memory.len().is_multiple_of(PAGE_SIZE) {
        return Err("memory is not a whole number of pages");
    }
    if (memory.len() / PAGE_SIZE) as u64 > u64::from(u32::MAX) {
        return Err("memory has 2^32 pages or more");
    }
    Ok(())
}

/// Runs of the non-zero pages of `memory` (checked by [`check_memory`]).
pub(crate) fn scan_full(memory: &[u8]) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = Vec::new();
    let (pages, _) = memory.as_chunks::<PAGE_SIZE>();
    let mut open: Option<PageRun> = None;
    for (index, page) in pages.iter().enumerate() {
        if is_zero_page(page) {
            runs.extend(open.take());
        } else if let Some(run) = open.as_mut() {
            run.count += 1;
        } else {
            open = Some(PageRun { first: index as u32, count: 1, kind: RunKind::Data });
        }
    }
    runs.extend(open);
    runs
}

/// Runs of pages `dirty` of `memory` (checked by [`check_memory`]), zero pages as zero.
pub(crate) fn scan_dirty(memory: &[u8], dirty: &[u32]) -> Result<Vec<PageRun>, &'static str> {
    let pages = (memory.len() / PAGE_SIZE) as u64;
    let mut runs: Vec<PageRun> = Vec::new();
    for &index in dirty {
        if u64::from(index) >= pages {
            return Err("a dirty page is beyond memory");
        }
        let at = index as usize * PAGE_SIZE;
        let kind = if is_zero_page(&memory[at..at + PAGE_SIZE]) { RunKind::Zero } else { RunKind::Data };
        match runs.last_mut() {
            Some(last) if u64::from(index) < last.end() => {
                return Err("dirty pages are not strictly increasing");
            }
            Some(last) if last.kind == kind && last.end() == u64::from(index) => last.count += 1,
            _ => runs.push(PageRun { first: index, count: 1, kind }),
        }
    }
    Ok(runs)
}

/// Applies sorted `runs` to `memory`: zero runs are zeroed, data runs handed to
/// `write_data` with their slice of memory; with `full`, the gaps are zeroed too.
/// Checks bounds before writing anything.
pub(crate) fn apply_runs(
    runs: &[PageRun],
    memory: &mut [u8],
    full: bool,
    mut write_data: impl FnMut(&PageRun, &mut [u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let memory_pages = (memory.len() / PAGE_SIZE) as u64;
    if let Some(last) = runs.last()
        && last.end() > memory_pages
    {
        let index =
            runs.iter().find(|r| r.end() > memory_pages).map_or(last.first, |r| r.first.max(memory_pages as u32));
        return Err(SnapshotError::PageOutOfBounds { index, memory_bytes: memory.len() as u64 });
    }
    let mut covered = 0;
    for run in runs {
        let range = run_range(run);
        if full {
            memory[covered..range.start].fill(0);
        }
        covered = range.end;
        let dest = &mut memory[range];
        match run.kind {
            RunKind::Zero => dest.fill(0),
            RunKind::Data => write_data(run, dest)?,
        }
    }
    if full {
        memory[covered..].fill(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    #[test]
    fn zero_check_sees_any_byte() {
        let mut p = page(0);
        assert!(is_zero_page(&p));
        for at in [0, 7, 8, 255, 256, 2049, PAGE_SIZE - 1] {
            p[at] = 1;
            assert!(!is_zero_page(&p), "byte {at}");
            p[at] = 0;
        }
        assert!(is_zero_page(&[0; 5]));
        assert!(!is_zero_page(&[0, 0, 0, 0, 9]));
    }

    #[test]
    fn builder_merges_touching_runs_of_a_kind() {
        let mut pages = Pages::new();
        pages.push_data(1, &page(1));
        pages.push_data(2, &page(2));
        pages.push_zero(3);
        pages.push_zero(4);
        pages.push_data(6, &page(6));
        assert_eq!(
            pages.runs(),
            &[
                PageRun { first: 1, count: 2, kind: RunKind::Data },
                PageRun { first: 3, count: 2, kind: RunKind::Zero },
                PageRun { first: 6, count: 1, kind: RunKind::Data },
            ]
        );
        assert_eq!(pages.page_count(), 5);
        assert_eq!(pages.data_pages(), 3);
        let seen: Vec<(u32, Option<u8>)> = pages.iter().map(|(i, p)| (i, p.map(|p| p[0]))).collect();
        assert_eq!(seen, [(1, Some(1)), (2, Some(2)), (3, None), (4, None), (6, Some(6))]);
    }

    #[test]
    #[should_panic(expected = "pushed after")]
    fn builder_refuses_unsorted_pages() {
        let mut pages = Pages::new();
        pages.push_zero(3);
        pages.push_zero(3);
    }

    #[test]
    fn full_scan_skips_zero_pages() {
        let mut memory = vec![0u8; 8 * PAGE_SIZE];
        memory[PAGE_SIZE + 5] = 1;
        memory[2 * PAGE_SIZE] = 2;
        memory[7 * PAGE_SIZE + PAGE_SIZE - 1] = 3;
        let pages = Pages::from_memory_full(&memory);
        assert_eq!(
            pages.runs(),
            &[PageRun { first: 1, count: 2, kind: RunKind::Data }, PageRun { first: 7, count: 1, kind: RunKind::Data },]
        );
        let mut back = vec![0xAA; memory.len()];
        pages.apply_full_to(&mut back).unwrap();
        assert_eq!(back, memory);
    }

    #[test]
    fn dirty_scan_records_zeroed_pages() {
        let mut memory = vec![0u8; 6 * PAGE_SIZE];
        memory[PAGE_SIZE..2 * PAGE_SIZE].fill(9);
        let pages = Pages::from_memory_dirty(&memory, &[0, 1, 4]);
        assert_eq!(
            pages.runs(),
            &[
                PageRun { first: 0, count: 1, kind: RunKind::Zero },
                PageRun { first: 1, count: 1, kind: RunKind::Data },
                PageRun { first: 4, count: 1, kind: RunKind::Zero },
            ]
        );
        let mut target = vec![5u8; memory.len()];
        pages.apply_to(&mut target).unwrap();
        assert_eq!(&target[..2 * PAGE_SIZE], &memory[..2 * PAGE_SIZE]);
        assert!(target[2 * PAGE_SIZE..4 * PAGE_SIZE].iter().all(|&b| b == 5), "untouched");
        assert!(target[4 * PAGE_SIZE..5 * PAGE_SIZE].iter().all(|&b| b == 0));
    }

    #[test]
    fn dirty_scan_refuses_bad_lists() {
        let memory = vec![0u8; 4 * PAGE_SIZE];
        assert!(scan_dirty(&memory, &[2, 1]).is_err());
        assert!(scan_dirty(&memory, &[1, 1]).is_err());
        assert!(scan_dirty(&memory, &[4]).is_err());
        assert!(check_memory(&memory[1..]).is_err());
    }

    #[test]
    fn applying_beyond_memory_fails_before_writing() {
        let mut pages = Pages::new();
        pages.push_data(0, &page(1));
        pages.push_data(3, &page(3));
        let mut memory = vec![0u8; 2 * PAGE_SIZE];
        assert_eq!(
            pages.apply_to(&mut memory),
            Err(SnapshotError::PageOutOfBounds { index: 3, memory_bytes: 2 * PAGE_SIZE as u64 })
        );
        assert!(memory.iter().all(|&b| b == 0));
    }
}
