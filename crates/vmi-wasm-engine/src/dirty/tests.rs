//! The tracker contract, checked against every mechanism this machine offers.

use std::error::Error as _;

use super::userfaultfd::Mapping;
use super::*;

pub(super) const PAGES: usize = 4096; // 16 MiB

/// Whether this machine must support write-protect: Linux 6.7 or later, running as root.
pub(super) fn write_protect_expected() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // SAFETY: `utsname` is plain bytes, all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes one `utsname` into the pointer it is given.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    root && version >= (6, 7)
}

/// The mechanisms to test here; write-protect must be among them where the kernel has it.
fn kinds() -> Vec<TrackerKind> {
    match write_protect_support() {
        Ok(()) => vec![TrackerKind::WriteProtect, TrackerKind::ShadowCompare],
        Err(e) => {
            println!("write-protect tracking unavailable: {}", error_chain(e));
            assert!(!write_protect_expected(), "Linux 6.7+ as root must support write-protect: {}", error_chain(e));
            vec![TrackerKind::ShadowCompare]
        }
    }
}

/// A 16 MiB memory: `PAGES` accessible pages in a reservation of twice that, with the first quarter
/// written (non-zero) before tracking starts.
pub(super) fn memory() -> Mapping {
    let map = Mapping::reserve(2 * PAGES * PAGE_SIZE).expect("reserve");
    map.make_accessible(PAGES * PAGE_SIZE).expect("mprotect");
    for page in 0..PAGES / 4 {
        map.write(page * PAGE_SIZE, 0x5a);
    }
    map
}

fn tracked(kind: TrackerKind, map: &Mapping, pages: usize) -> Box<dyn DirtyTracker> {
    let mut tracker = new_tracker(kind).expect("tracker");
    // SAFETY: `map` is private anonymous read-write memory that outlives the tracker in every test, and is
    // written only by the test's own thread between tracker calls.
    unsafe { tracker.track(map.ptr(), pages * PAGE_SIZE) }.expect("track");
    tracker
}

pub(super) fn collect(tracker: &mut dyn DirtyTracker) -> Vec<u32> {
    let mut out = vec![u32::MAX]; // collect replaces, not appends
    tracker.collect(&mut out).expect("collect");
    out
}

#[test]
fn best_tracker_is_write_protect_where_the_kernel_has_it() {
    let tracker = best_tracker();
    if write_protect_expected() {
        assert_eq!(tracker.mechanism(), WRITE_PROTECT, "Linux 6.7+ as root must pick write-protect");
    } else if let Err(e) = write_protect_support() {
        println!("write-protect unavailable ({}), fallback in use", error_chain(e));
        assert_eq!(tracker.mechanism(), SHADOW_COMPARE);
    }
    let names: Vec<_> = kinds().into_iter().map(|k| new_tracker(k).expect("tracker").mechanism()).collect();
    assert!(names.contains(&SHADOW_COMPARE));
}

#[test]
fn fresh_track_is_clean() {
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
    }
}

#[test]
fn reports_exactly_the_written_pages_once() {
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        // Page 0 was populated before tracking, 7 too, 4095 never touched.
        for page in [4095, 0, 7] {
            map.write(page * PAGE_SIZE + 100, 0xa5);
        }
        assert_eq!(collect(&mut *tracker), [0, 7, 4095], "{kind:?}");
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
        map.write(7 * PAGE_SIZE, 1);
        assert_eq!(collect(&mut *tracker), [7], "{kind:?}");
    }
}

#[test]
fn rewriting_the_same_value_is_dirty_only_for_write_protect() {
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        let old = map.read(3 * PAGE_SIZE);
        map.write(3 * PAGE_SIZE, old);
        let expected: &[u32] = match kind {
            TrackerKind::WriteProtect => &[3], // written, a superset of changed
            TrackerKind::ShadowCompare => &[],
        };
        assert_eq!(collect(&mut *tracker), expected, "{kind:?}");
    }
}

#[test]
fn reads_are_clean() {
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        // A populated page, and a never-touched one (mapped to the zero page by the read).
        assert_eq!(map.read(PAGE_SIZE), 0x5a);
        assert_eq!(map.read(3000 * PAGE_SIZE), 0);
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
        map.write(3000 * PAGE_SIZE, 1);
        assert_eq!(collect(&mut *tracker), [3000], "{kind:?}");
    }
}

#[test]
fn grown_pages_are_dirty_once_then_tracked() {
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        map.write(5 * PAGE_SIZE, 9);
        map.make_accessible((PAGES + 2048) * PAGE_SIZE).expect("grow");
        map.write((PAGES + 10) * PAGE_SIZE, 9); // written between the grow and `track`
        // SAFETY: as in `tracked`, now over the grown accessible part.
        unsafe { tracker.track(map.ptr(), (PAGES + 2048) * PAGE_SIZE) }.expect("track grown");
        let mut expected = vec![5];
        expected.extend(PAGES as u32..(PAGES + 2048) as u32);
        assert_eq!(collect(&mut *tracker), expected, "{kind:?}");
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
        map.write((PAGES + 2000) * PAGE_SIZE, 1);
        map.write(6 * PAGE_SIZE, 1);
        assert_eq!(collect(&mut *tracker), [6, PAGES as u32 + 2000], "{kind:?}");

        // Two grows before one collect: one dirty tail from the first old end.
        map.make_accessible((PAGES + 2100) * PAGE_SIZE).expect("grow");
        // SAFETY: as above.
        unsafe { tracker.track(map.ptr(), (PAGES + 2100) * PAGE_SIZE) }.expect("track grown");
        map.make_accessible((PAGES + 2200) * PAGE_SIZE).expect("grow");
        // SAFETY: as above.
        unsafe { tracker.track(map.ptr(), (PAGES + 2200) * PAGE_SIZE) }.expect("track grown");
        map.write(PAGE_SIZE, 7);
        let mut expected = vec![1];
        expected.extend((PAGES + 2048) as u32..(PAGES + 2200) as u32);
        assert_eq!(collect(&mut *tracker), expected, "{kind:?}");
    }
}

#[test]
fn track_again_at_the_same_size_starts_clean() {
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        map.write(9 * PAGE_SIZE, 1); // e.g. a restore writing the memory
        // SAFETY: as in `tracked`.
        unsafe { tracker.track(map.ptr(), PAGES * PAGE_SIZE) }.expect("track again");
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
        map.write(9 * PAGE_SIZE, 2);
        assert_eq!(collect(&mut *tracker), [9], "{kind:?}");
    }
}

#[test]
fn scattered_writes_span_several_scans() {
    // Every other page: 2048 separate runs, four times what one PAGEMAP_SCAN call returns.
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        for page in (0..PAGES).step_by(2) {
            map.write(page * PAGE_SIZE + 1, 0x77);
        }
        let expected: Vec<u32> = (0..PAGES as u32).step_by(2).collect();
        assert_eq!(collect(&mut *tracker), expected, "{kind:?}");
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
    }
}

#[test]
fn mprotect_keeps_tracking() {
    // Wasmtime changes protections of the slot; the write-protect bit must survive that.
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        // SAFETY: a range inside `map`; nothing writes it while read-only.
        let r = unsafe { libc::mprotect(map.ptr().cast(), 16 * PAGE_SIZE, libc::PROT_READ) };
        assert_eq!(r, 0);
        map.make_accessible(PAGES * PAGE_SIZE).expect("mprotect back");
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
        map.write(2 * PAGE_SIZE, 3);
        assert_eq!(collect(&mut *tracker), [2], "{kind:?}");
    }
}

#[test]
fn madvise_dontneed_pages_are_reported() {
    // Write-protect sees a dropped page only because the kernel's PAGEMAP_SCAN fast path (taken for exactly
    // our masks) counts a page without the protection bit as written, and a dropped anonymous page has
    // none. That holds on x86_64 Linux 6.7..6.18; it is not documented ABI, so the engine still tracks
    // afresh after wasmtime resets a slot. If this test fails on a new kernel, that rule becomes essential.
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        // SAFETY: drops pages 3 (populated) and 3000 (never touched) of `map`; no reference into it is alive.
        unsafe {
            assert_eq!(libc::madvise(map.ptr().add(3 * PAGE_SIZE).cast(), PAGE_SIZE, libc::MADV_DONTNEED), 0);
            assert_eq!(libc::madvise(map.ptr().add(3000 * PAGE_SIZE).cast(), PAGE_SIZE, libc::MADV_DONTNEED), 0);
        }
        let expected: &[u32] = match kind {
            TrackerKind::WriteProtect => &[3, 3000], // 3000 did not change: written-or-dropped is a superset
            TrackerKind::ShadowCompare => &[3],
        };
        assert_eq!(collect(&mut *tracker), expected, "{kind:?}");
        assert_eq!(map.read(3 * PAGE_SIZE), 0);
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
        map.write(3 * PAGE_SIZE, 4);
        assert_eq!(collect(&mut *tracker), [3], "{kind:?}");
    }
}

#[test]
fn replaced_mapping_fails_collect_instead_of_answering_wrongly() {
    for kind in kinds() {
        let map = memory();
        let mut tracker = tracked(kind, &map, PAGES);
        // SAFETY: replaces page 10 of `map` with a fresh mapping; no reference into it is alive.
        let p = unsafe {
            libc::mmap(
                map.ptr().add(10 * PAGE_SIZE).cast(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        map.write(10 * PAGE_SIZE, 1);
        let mut out = Vec::new();
        match kind {
            TrackerKind::WriteProtect => {
                let e = tracker.collect(&mut out).expect_err("unregistered memory in the range");
                assert!(matches!(&e, DirtyError::Scan { .. }), "{e:?}");
                let errno = e.source().and_then(|s| s.downcast_ref::<io::Error>()).and_then(io::Error::raw_os_error);
                assert_eq!(errno, Some(libc::EPERM));
                assert!(matches!(tracker.collect(&mut out), Err(DirtyError::NotTracking)));
            }
            TrackerKind::ShadowCompare => assert_eq!(collect(&mut *tracker), [10]),
        }
        // Tracking afresh covers the new mapping too.
        // SAFETY: as in `tracked`.
        unsafe { tracker.track(map.ptr(), PAGES * PAGE_SIZE) }.expect("track afresh");
        map.write(10 * PAGE_SIZE, 2);
        assert_eq!(collect(&mut *tracker), [10], "{kind:?}");
    }
}

#[test]
fn bad_regions_and_untracked_collect_are_errors() {
    for kind in kinds() {
        let mut tracker = new_tracker(kind).expect("tracker");
        let mut out = Vec::new();
        assert!(matches!(tracker.collect(&mut out), Err(DirtyError::NotTracking)), "{kind:?}");
        let map = memory();
        // SAFETY: the region is inside `map`; the call fails validation before touching it.
        let r = unsafe { tracker.track(map.ptr().add(1), PAGE_SIZE) };
        assert!(matches!(r, Err(DirtyError::Misaligned { .. })), "{kind:?}");
        // SAFETY: as above.
        let r = unsafe { tracker.track(map.ptr(), PAGE_SIZE + 1) };
        assert!(matches!(r, Err(DirtyError::Misaligned { .. })), "{kind:?}");
        assert!(matches!(tracker.collect(&mut out), Err(DirtyError::NotTracking)), "{kind:?}");
        // An empty memory is fine.
        // SAFETY: zero bytes.
        unsafe { tracker.track(map.ptr(), 0) }.expect("empty track");
        assert_eq!(collect(&mut *tracker), Vec::<u32>::new(), "{kind:?}");
    }
}
