//! Userfaultfd async write-protect plus `PAGEMAP_SCAN`.
//!
//! Kernel ABI: `include/uapi/linux/userfaultfd.h` and `include/uapi/linux/fs.h` (Linux 6.7+). The ioctl
//! numbers use the generic encoding of `include/uapi/asm-generic/ioctl.h` (x86, arm64, riscv; not powerpc,
//! mips or sparc, hence the `cfg`); the `const` assertions pin them to the values a C compiler gives.

use super::{DirtyError, DirtyTracker, PAGE_SIZE, WRITE_PROTECT, merge_dirty_tail, page_count, push_pages};
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

// asm-generic/ioctl.h: dir << 30 | size << 16 | type << 8 | nr.
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

// linux/userfaultfd.h
const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const _UFFDIO_WRITEPROTECT: u8 = 0x06;
const USERFAULTFD_IOC_NEW: u64 = ioc(IOC_NONE, 0xAA, 0x00, 0);
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0xAA, 0x01, size_of::<UffdioRange>());
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, _UFFDIO_WRITEPROTECT, size_of::<UffdioWriteprotect>());

// linux/fs.h
const PAGEMAP_SCAN: u64 = ioc(IOC_READ | IOC_WRITE, b'f', 16, size_of::<PmScanArg>());
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

// Values printed by gcc from the uapi headers (PAGEMAP_SCAN from the 6.7+ `struct pm_scan_arg`).
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xaa00);
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);
const _: () = assert!(size_of::<PageRegion>() == 24);

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct page_region`: `[start, end)` with `categories`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// An ioctl argument struct and the one request that takes a pointer to it.
///
/// # Safety
///
/// `REQUEST` must be the ioctl whose argument is a pointer to exactly one `Self`.
unsafe trait IoctlArg {
    const REQUEST: u64;
}
// SAFETY: each pairs the request with the struct its `_IOWR`/`_IOR` definition names; sizes match by the
// assertions above.
unsafe impl IoctlArg for UffdioApi {
    const REQUEST: u64 = UFFDIO_API;
}
// SAFETY: as above.
unsafe impl IoctlArg for UffdioRegister {
    const REQUEST: u64 = UFFDIO_REGISTER;
}
// SAFETY: as above.
unsafe impl IoctlArg for UffdioRange {
    const REQUEST: u64 = UFFDIO_UNREGISTER;
}
// SAFETY: as above.
unsafe impl IoctlArg for UffdioWriteprotect {
    const REQUEST: u64 = UFFDIO_WRITEPROTECT;
}
// SAFETY: as above.
unsafe impl IoctlArg for PmScanArg {
    const REQUEST: u64 = PAGEMAP_SCAN;
}

/// Issues `T::REQUEST` on `fd` with `arg`, retrying `EINTR` and the transient `EAGAIN`.
///
/// # Safety
///
/// Every address inside `arg` must be valid for what the ioctl does with it. The userfaultfd ioctls only
/// change page-table bits of the range they are given (invisible to the program in async mode);
/// `PAGEMAP_SCAN` writes `vec_len` `page_region`s at `vec`.
unsafe fn ioctl<T: IoctlArg>(fd: BorrowedFd<'_>, arg: &mut T) -> io::Result<libc::c_int> {
    let mut tries = 0;
    loop {
        // SAFETY: `arg` is a live, exclusive `T`, which is what `T::REQUEST` reads and writes (IoctlArg);
        // the caller vouches for the addresses inside it.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), T::REQUEST as libc::Ioctl, std::ptr::from_mut(arg)) };
        if r >= 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        tries += 1;
        // EAGAIN: userfaultfd ioctls give it while the address space is being changed under them.
        let transient = matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN));
        if !transient || tries >= 1000 {
            return Err(e);
        }
    }
}

/// The flags of our userfaultfds: no fork inheritance past exec, never block, user-mode faults only.
const UFFD_FLAGS: libc::c_int = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;

/// Opens a userfaultfd: the system call first, `/dev/userfaultfd` if that is refused (the system call
/// needs `CAP_SYS_PTRACE` when `vm.unprivileged_userfaultfd` is 0, and seccomp filters often deny it).
fn open_userfaultfd() -> Result<OwnedFd, DirtyError> {
    // SAFETY: userfaultfd(2) takes one int of flags and returns a new descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, UFFD_FLAGS) };
    if fd >= 0 {
        // SAFETY: the kernel just created this descriptor and nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let syscall = io::Error::last_os_error();
    userfaultfd_from_device().map_err(|device| DirtyError::CreateUserfaultfd { syscall, device })
}

/// Opens a userfaultfd through `/dev/userfaultfd` (Linux 6.1+), whose file mode decides who may.
pub(super) fn userfaultfd_from_device() -> io::Result<OwnedFd> {
    let device = OpenOptions::new().read(true).write(true).open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(device.as_raw_fd(), USERFAULTFD_IOC_NEW as libc::Ioctl, UFFD_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A tracked region: addresses only, never dereferenced by this tracker.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Region {
    base: usize,
    len: usize,
}

/// Regions per `PAGEMAP_SCAN` call (24 bytes each). A region is a run of consecutive written pages, so
/// one call usually suffices; more are made when the writes are scattered.
const SCAN_BATCH: usize = 512;

/// Tracks with userfaultfd async write-protect and reads back with `PAGEMAP_SCAN`.
pub(super) struct WriteProtectTracker {
    uffd: OwnedFd,
    pagemap: File,
    region: Option<Region>,
    /// Pages from here to the end were added by a grow and are dirty at the next collect.
    dirty_tail_from: Option<usize>,
    scan: Vec<PageRegion>,
}

impl WriteProtectTracker {
    pub(super) fn new() -> Result<Self, DirtyError> {
        Self::with_userfaultfd(open_userfaultfd)
    }

    /// Sets up a tracker on the userfaultfd `open` gives, after checking the page size.
    pub(super) fn with_userfaultfd(open: impl FnOnce() -> Result<OwnedFd, DirtyError>) -> Result<Self, DirtyError> {
        // SAFETY: sysconf only reads a configuration value.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if size != PAGE_SIZE as libc::c_long {
            return Err(DirtyError::PageSize { size: size as usize });
        }
        let uffd = open()?;
        let wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let mut api = UffdioApi { api: UFFD_API, features: wanted, ioctls: 0 };
        // SAFETY: UFFDIO_API's argument holds no addresses.
        unsafe { ioctl(uffd.as_fd(), &mut api) }.map_err(DirtyError::Handshake)?;
        if api.features & wanted != wanted {
            return Err(DirtyError::MissingFeatures { offered: api.features });
        }
        let pagemap = File::open("/proc/self/pagemap").map_err(DirtyError::OpenPagemap)?;
        Ok(Self { uffd, pagemap, region: None, dirty_tail_from: None, scan: vec![PageRegion::default(); SCAN_BATCH] })
    }

    fn register(&self, start: usize, len: usize) -> Result<(), DirtyError> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: start as u64, len: len as u64 },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: registering only sets flags on the range's mappings; async write-protect faults are
        // resolved by the kernel, so no access to the range can block or fail because of it.
        unsafe { ioctl(self.uffd.as_fd(), &mut reg) }.map_err(|source| DirtyError::Register { start, len, source })?;
        if reg.ioctls & (1 << _UFFDIO_WRITEPROTECT) == 0 {
            return Err(DirtyError::NoWriteProtect { start, len });
        }
        Ok(())
    }

    fn unregister(&self, region: Region) {
        let mut range = UffdioRange { start: region.base as u64, len: region.len as u64 };
        // SAFETY: unregistering clears the flags and write-protect bits of our own registration only.
        if let Err(e) = unsafe { ioctl(self.uffd.as_fd(), &mut range) } {
            // The old memory may be gone already; a stale registration only costs a fault per first write,
            // and closing the userfaultfd clears it.
            tracing::debug!(error = %e, base = region.base, len = region.len, "Cannot unregister old region");
        }
    }

    fn protect(&self, start: usize, len: usize) -> Result<(), DirtyError> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange { start: start as u64, len: len as u64 },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: in async mode write-protection is invisible to the program: a write to a protected page
        // is resolved by the kernel within the fault.
        unsafe { ioctl(self.uffd.as_fd(), &mut wp) }.map_err(|source| DirtyError::WriteProtect {
            start,
            len,
            source,
        })?;
        Ok(())
    }

    /// Registers and protects `[start, start + len)`.
    fn arm(&self, start: usize, len: usize) -> Result<(), DirtyError> {
        if len == 0 {
            return Ok(());
        }
        self.register(start, len)?;
        self.protect(start, len)
    }

    /// Appends the written pages of `region` to `out` (sorted) and protects them again.
    fn scan(&mut self, region: Region, out: &mut Vec<u32>) -> Result<(), DirtyError> {
        let end = region.base + region.len;
        let mut at = region.base;
        while at < end {
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: at as u64,
                end: end as u64,
                walk_end: 0,
                vec: self.scan.as_mut_ptr().expose_provenance() as u64,
                vec_len: self.scan.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            };
            // SAFETY: `vec`/`vec_len` describe `self.scan`, which is exclusively borrowed here and holds plain
            // integers, so any bytes the kernel writes there are valid.
            let found =
                unsafe { ioctl(self.pagemap.as_fd(), &mut arg) }.map_err(|source| DirtyError::Scan { at, source })?;
            let found = usize::try_from(found).unwrap_or(0).min(self.scan.len());
            let mut last = at as u64;
            for r in &self.scan[..found] {
                let bad = r.start < last
                    || r.end <= r.start
                    || r.end > arg.walk_end
                    || !(r.start as usize).is_multiple_of(PAGE_SIZE)
                    || !(r.end as usize).is_multiple_of(PAGE_SIZE);
                if bad {
                    return Err(DirtyError::BadScan { start: r.start, end: r.end });
                }
                last = r.end;
                let first = (r.start as usize - region.base) / PAGE_SIZE;
                let past = (r.end as usize - region.base) / PAGE_SIZE;
                push_pages(out, first, past);
            }
            // The walk stops early when `scan` fills; it resumes where it stopped.
            if arg.walk_end <= at as u64 || arg.walk_end > end as u64 {
                return Err(DirtyError::BadScan { start: at as u64, end: arg.walk_end });
            }
            at = arg.walk_end as usize;
        }
        Ok(())
    }
}

impl DirtyTracker for WriteProtectTracker {
    unsafe fn track(&mut self, base: *mut u8, len: usize) -> Result<(), DirtyError> {
        let previous = self.region.take();
        let result = page_count(base, len).and_then(|_| {
            let new = Region { base: base.addr(), len };
            match previous {
                Some(old) if old.base == new.base && new.len > old.len => {
                    // Grown in place: the old part keeps its state, the new part is dirty once.
                    self.arm(new.base + old.len, new.len - old.len)?;
                    self.dirty_tail_from.get_or_insert(old.len / PAGE_SIZE);
                }
                _ => {
                    if let Some(old) = previous.filter(|&old| old != new) {
                        self.unregister(old);
                    }
                    self.dirty_tail_from = None;
                    // Registering an already registered range is a no-op, and it re-registers memory that was
                    // mapped afresh at the same address.
                    self.arm(new.base, new.len)?;
                }
            }
            Ok(new)
        });
        match result {
            Ok(new) => {
                self.region = Some(new);
                Ok(())
            }
            Err(e) => {
                self.dirty_tail_from = None;
                Err(e)
            }
        }
    }

    fn collect(&mut self, out: &mut Vec<u32>) -> Result<(), DirtyError> {
        let region = self.region.take().ok_or(DirtyError::NotTracking)?;
        out.clear();
        if let Err(e) = self.scan(region, out) {
            self.dirty_tail_from = None;
            return Err(e);
        }
        if let Some(from) = self.dirty_tail_from.take() {
            merge_dirty_tail(out, from, region.len / PAGE_SIZE);
        }
        self.region = Some(region);
        Ok(())
    }

    fn mechanism(&self) -> &'static str {
        WRITE_PROTECT
    }
}

/// Private anonymous memory mapped by the probe (and the tests): a reservation of which a prefix is
/// made read-write, the way wasmtime lays out a linear memory.
pub(super) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Reserves `len` bytes, inaccessible.
    pub(super) fn reserve(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast(), len })
    }

    /// Makes the first `len` bytes readable and writable.
    pub(super) fn make_accessible(&self, len: usize) -> io::Result<()> {
        assert!(len <= self.len, "beyond the reservation");
        // SAFETY: the range lies inside this mapping, which nothing else references.
        let r = unsafe { libc::mprotect(self.ptr.cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Writes `value` at byte `offset` of the mapping.
    pub(super) fn write(&self, offset: usize, value: u8) {
        assert!(offset < self.len, "beyond the reservation");
        // SAFETY: inside the mapping; volatile so the store is not elided. Faults if not made accessible, as
        // any stray write would.
        unsafe { self.ptr.add(offset).write_volatile(value) }
    }

    /// Reads byte `offset` of the mapping.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn read(&self, offset: usize) -> u8 {
        assert!(offset < self.len, "beyond the reservation");
        // SAFETY: inside the mapping; volatile so the load is not elided.
        unsafe { self.ptr.add(offset).read_volatile() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `reserve` mapped; nothing borrows it past the `Mapping`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Checks on a scratch mapping that write-protect tracking really reports writes: to a page populated
/// before tracking and to one never touched (the `WP_UNPOPULATED` path).
pub(super) fn probe() -> Result<(), DirtyError> {
    let len = 4 * PAGE_SIZE;
    let map = Mapping::reserve(len).map_err(DirtyError::ProbeMap)?;
    map.make_accessible(len).map_err(DirtyError::ProbeMap)?;
    let mut tracker = WriteProtectTracker::new()?;
    map.write(PAGE_SIZE, 1);
    // SAFETY: `map` is private anonymous read-write memory that outlives `tracker` (declared after it) and
    // is written only by this thread, between the calls.
    unsafe { tracker.track(map.ptr(), len) }?;
    map.write(PAGE_SIZE, 2);
    map.write(2 * PAGE_SIZE, 2);
    let mut got = Vec::new();
    tracker.collect(&mut got)?;
    if got != [1, 2] {
        return Err(DirtyError::ProbeMismatch { got, expected: vec![1, 2] });
    }
    tracker.collect(&mut got)?;
    if !got.is_empty() {
        return Err(DirtyError::ProbeMismatch { got, expected: Vec::new() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{PAGES, collect, memory, write_protect_expected};
    use super::super::{error_chain, write_protect_support};
    use super::*;

    #[test]
    fn dev_userfaultfd_fallback_tracks_too() {
        if write_protect_support().is_err() {
            return; // reported by `kinds()` in the other tests
        }
        let tracker = WriteProtectTracker::with_userfaultfd(|| {
            userfaultfd_from_device().map_err(|device| DirtyError::CreateUserfaultfd {
                syscall: io::Error::from_raw_os_error(libc::EPERM),
                device,
            })
        });
        let mut tracker = match tracker {
            Ok(tracker) => tracker,
            // The device is root's only (mode 0600) unless an administrator opens it up.
            Err(DirtyError::CreateUserfaultfd { device, .. })
                if device.kind() == io::ErrorKind::PermissionDenied && !write_protect_expected() =>
            {
                println!("/dev/userfaultfd not accessible to this user: {device}");
                return;
            }
            Err(e) => panic!("userfaultfd from /dev/userfaultfd: {}", error_chain(&e)),
        };
        let map = memory();
        // SAFETY: as in `tracked`.
        unsafe { tracker.track(map.ptr(), PAGES * PAGE_SIZE) }.expect("track");
        map.write(42 * PAGE_SIZE, 1);
        assert_eq!(collect(&mut tracker), [42]);
    }

    #[test]
    fn write_protect_errors_name_their_cause() {
        let e = DirtyError::Scan { at: 0x1000, source: io::Error::from_raw_os_error(libc::EPERM) };
        assert_eq!(e.to_string(), "PAGEMAP_SCAN failed at 0x1000");
        assert!(error_chain(&e).starts_with("PAGEMAP_SCAN failed at 0x1000: "));
    }
}
