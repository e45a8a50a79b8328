//! A phone's guest RAM: a file QEMU maps shared (`memory-backend-file,share=on`) and the engine maps too, so a
//! snapshot reads pages straight from it and a restore lays them down before QEMU starts.

use std::fs::OpenOptions;
use std::path::Path;

use vmi_snapshot::{PAGE_SIZE, Pages, is_zero_page};

use crate::error::QemuError;

/// A page's fingerprint: what tells an incremental snapshot which pages changed.
pub type PageHash = [u8; 16];

/// The fingerprint of a zero page (no blake3 output is all zeros in practice).
const ZERO: PageHash = [0; 16];

/// Threads a collection of pages uses at most.
const MAX_THREADS: usize = 4;

/// The RAM file, mapped.
pub struct RamFile {
    ptr: *mut u8,
    len: usize,
    /// Kept open to find the pages never written (holes in the file read as zero and need no reading).
    file: std::fs::File,
}

// SAFETY: the mapping is owned by this value and freed once, in Drop; QEMU writes to it concurrently, which the
// readers here tolerate by copying pages through raw pointers (a torn page is caught by the next round's
// comparison, and consistent snapshots are taken with QEMU stopped).
unsafe impl Send for RamFile {}
// SAFETY: through a shared reference the mapping is only read by raw copies, which already tolerate another
// process writing; writing needs `&mut self`.
unsafe impl Sync for RamFile {}

impl RamFile {
    /// Creates a zeroed RAM file of `len` bytes at `path`.
    pub fn create(path: &Path, len: u64) -> Result<RamFile, QemuError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .create_new(true)
            .open(path)
            .map_err(QemuError::io(format!("creating {}", path.display())))?;
        file.set_len(len).map_err(QemuError::io(format!("sizing {}", path.display())))?;
        RamFile::map(file, len)
    }

    /// Maps the RAM file at `path`, which must be `len` bytes long.
    pub fn open(path: &Path, len: u64) -> Result<RamFile, QemuError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(QemuError::io(format!("opening {}", path.display())))?;
        let actual = file.metadata().map_err(QemuError::io("RAM file"))?.len();
        if actual != len {
            return Err(QemuError::Qemu(format!("the RAM file holds {actual} bytes, the image wants {len}")));
        }
        RamFile::map(file, len)
    }

    fn map(file: std::fs::File, len: u64) -> Result<RamFile, QemuError> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).map_err(|_| QemuError::Qemu("RAM larger than the address space".into()))?;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(QemuError::Qemu(format!("RAM of {len} bytes is not a whole number of pages")));
        }
        // SAFETY: a fresh shared mapping of a file we hold open; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(QemuError::io("mapping the RAM file")(std::io::Error::last_os_error()));
        }
        Ok(RamFile { ptr: ptr.cast(), len, file })
    }

    /// Bytes of RAM.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Pages of RAM.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// Copies page `index` out (QEMU may be writing it).
    fn copy_page(&self, index: usize, into: &mut [u8; PAGE_SIZE]) {
        debug_assert!(index < self.pages());
        // SAFETY: index is in range; a raw copy tolerates the other process writing meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(index * PAGE_SIZE), into.as_mut_ptr(), PAGE_SIZE) }
    }

    /// The pages to put in a snapshot, from copies taken once each (so what is recorded and its fingerprint
    /// agree even while QEMU runs): every non-zero page (`since` is `None`), or those whose fingerprint differs
    /// from `since`. Returns them with every page's fingerprint now.
    ///
    /// The pages never written are skipped unread (holes in the file), and the rest is split between the cores:
    /// a migration's final delta is taken with the guest stopped, and this pass is most of that stop.
    pub fn collect(&self, since: Option<&[PageHash]>) -> (Pages, Vec<PageHash>) {
        let written = self.written_pages();
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_THREADS);
        let bounds: Vec<usize> = (0..=parts).map(|k| self.pages() * k / parts).collect();
        let mut results: Vec<(Pages, Vec<PageHash>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = bounds
                .windows(2)
                .map(|w| {
                    let (from, to) = (w[0], w[1]);
                    let written = &written;
                    scope.spawn(move || self.collect_range(from..to, written, since))
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        let (mut pages, mut hashes) = results.remove(0);
        for (more, more_hashes) in results {
            for (index, data) in more.iter() {
                match data {
                    Some(data) => pages.push_data(index, data),
                    None => pages.push_zero(index),
                }
            }
            hashes.extend(more_hashes);
        }
        (pages, hashes)
    }

    fn collect_range(
        &self,
        range: std::ops::Range<usize>,
        written: &[std::ops::Range<usize>],
        since: Option<&[PageHash]>,
    ) -> (Pages, Vec<PageHash>) {
        let mut pages = Pages::new();
        let mut hashes = Vec::with_capacity(range.len());
        let mut page = [0u8; PAGE_SIZE];
        let (start, end) = (range.start, range.end);
        let mut extents = written.iter().filter(|w| w.end > start && w.start < end).peekable();
        for i in range {
            while extents.next_if(|w| w.end <= i).is_some() {}
            let in_hole = extents.peek().is_none_or(|w| i < w.start);
            let zero = in_hole || {
                self.copy_page(i, &mut page);
                is_zero_page(&page)
            };
            let hash = if zero { ZERO } else { fingerprint(&page) };
            let changed = match since {
                None => !zero,
                Some(old) => old.get(i) != Some(&hash),
            };
            if changed {
                if zero {
                    pages.push_zero(i as u32);
                } else {
                    pages.push_data(i as u32, &page);
                }
            }
            hashes.push(hash);
        }
        (pages, hashes)
    }

    /// The page ranges of the file that hold data (all of it where the file system cannot say).
    fn written_pages(&self) -> Vec<std::ops::Range<usize>> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let len = self.len as libc::off_t;
        let mut out = Vec::new();
        let mut at: libc::off_t = 0;
        while at < len {
            // SAFETY: lseek on a descriptor this value owns; results are checked.
            let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
            if data < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                    break; // nothing written past `at`
                }
                return std::iter::once(0..self.pages()).collect();
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            let hole = if hole < 0 { len } else { hole.min(len) };
            let first = data as usize / PAGE_SIZE;
            let end = (hole as usize).div_ceil(PAGE_SIZE).min(self.pages());
            if first < end {
                out.push(first..end);
            }
            at = hole.max(data + 1);
        }
        out
    }

    /// Page `index`'s fingerprint now.
    pub fn page_hash(&self, index: usize) -> PageHash {
        let mut page = [0u8; PAGE_SIZE];
        self.copy_page(index, &mut page);
        if is_zero_page(&page) { ZERO } else { fingerprint(&page) }
    }

    /// The fingerprints of a RAM file of `pages` pages that holds only zeros.
    pub fn zero_hashes(pages: usize) -> Vec<PageHash> {
        vec![ZERO; pages]
    }

    /// The RAM to write pages into, before the guest runs on it (QEMU may have it mapped, waiting for its device
    /// state: an incoming QEMU with `x-ignore-shared` leaves the shared RAM to whoever fills it).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is len bytes and lives as long as self; the guest is not running on it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

fn fingerprint(page: &[u8]) -> PageHash {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(page).as_bytes()[..16]);
    out
}

impl Drop for RamFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_finds_the_pages_that_changed_and_those_that_became_zero() {
        let dir = vmi_testkit::scratch_dir("ram");
        let mut ram = RamFile::create(&dir.join("ram"), 8 * PAGE_SIZE as u64).expect("ram");
        ram.bytes_mut()[PAGE_SIZE..2 * PAGE_SIZE].fill(7);
        ram.bytes_mut()[5 * PAGE_SIZE] = 1;
        let (full, hashes) = ram.collect(None);
        assert_eq!(full.iter().map(|(i, d)| (i, d.is_some())).collect::<Vec<_>>(), vec![(1, true), (5, true)]);
        ram.bytes_mut()[PAGE_SIZE..2 * PAGE_SIZE].fill(0);
        ram.bytes_mut()[3 * PAGE_SIZE] = 9;
        let (delta, _) = ram.collect(Some(&hashes));
        assert_eq!(delta.iter().map(|(i, d)| (i, d.is_some())).collect::<Vec<_>>(), vec![(1, false), (3, true)]);
        assert!(RamFile::open(&dir.join("ram"), PAGE_SIZE as u64).is_err(), "a length other than the file's");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn collect_skips_holes_and_splits_the_work_without_changing_the_result() {
        let dir = vmi_testkit::scratch_dir("ram-holes");
        let pages = 4099;
        let mut ram = RamFile::create(&dir.join("ram"), (pages * PAGE_SIZE) as u64).expect("ram");
        for (n, i) in [0usize, 1, 700, 2048, 2049, 4000, 4098].into_iter().enumerate() {
            ram.bytes_mut()[i * PAGE_SIZE + n] = n as u8 + 1;
        }
        // A page written with zeros is data in the file but a zero page in RAM.
        ram.bytes_mut()[3000 * PAGE_SIZE] = 0;
        let naive: Vec<PageHash> = (0..pages).map(|i| ram.page_hash(i)).collect();
        let (full, hashes) = ram.collect(None);
        assert_eq!(hashes, naive);
        let indices: Vec<u32> = full.iter().map(|(i, _)| i).collect();
        assert_eq!(indices, vec![0, 1, 700, 2048, 2049, 4000, 4098]);
        ram.bytes_mut()[2049 * PAGE_SIZE..2050 * PAGE_SIZE].fill(0);
        ram.bytes_mut()[3500 * PAGE_SIZE] = 5;
        let (delta, _) = ram.collect(Some(&hashes));
        assert_eq!(delta.iter().map(|(i, d)| (i, d.is_some())).collect::<Vec<_>>(), vec![(2049, false), (3500, true)]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
