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

/// The RAM file, mapped.
pub struct RamFile {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value and freed once, in Drop; QEMU writes to it concurrently, which the
// readers here tolerate by copying pages through raw pointers (a torn page is caught by the next round's
// comparison, and consistent snapshots are taken with QEMU stopped).
unsafe impl Send for RamFile {}

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
        RamFile::map(&file, len)
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
        RamFile::map(&file, len)
    }

    fn map(file: &std::fs::File, len: u64) -> Result<RamFile, QemuError> {
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
        Ok(RamFile { ptr: ptr.cast(), len })
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
    pub fn collect(&self, since: Option<&[PageHash]>) -> (Pages, Vec<PageHash>) {
        let mut pages = Pages::new();
        let mut hashes = Vec::with_capacity(self.pages());
        let mut page = [0u8; PAGE_SIZE];
        for i in 0..self.pages() {
            self.copy_page(i, &mut page);
            let zero = is_zero_page(&page);
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

    /// Every page's fingerprint now.
    pub fn hashes(&self) -> Vec<PageHash> {
        let mut page = [0u8; PAGE_SIZE];
        (0..self.pages())
            .map(|i| {
                self.copy_page(i, &mut page);
                if is_zero_page(&page) { ZERO } else { fingerprint(&page) }
            })
            .collect()
    }

    /// The RAM to write pages into, before QEMU runs on it.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is len bytes and lives as long as self; only called before QEMU maps the file.
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
}
