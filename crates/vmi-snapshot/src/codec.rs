//! The byte layout of docs/SNAPSHOT_FORMAT.md: encoding, and decoding of untrusted bytes.
//!
//! Decoding reads in two steps, like a network frame: the fixed preamble says how long
//! the header and the whole file are, so a short read is [`SnapshotError::Truncated`]
//! (read more) and is told apart from damage ([`SnapshotError::ChecksumMismatch`]) and
//! from wrong content ([`SnapshotError::Corrupt`], [`SnapshotError::TooLarge`]). Every
//! count is checked against the [`Limits`] and against the bytes left before anything is
//! allocated, and every loop is bounded by a count so checked.

use lz4_flex::block::{compress_into, decompress_into, get_maximum_output_size};

use crate::header::MAX_ENGINE_NAME;
use crate::pages::{PageRun, RunKind, apply_runs, data_runs, run_range};
use crate::{FORMAT_VERSION, GlobalValue, Header, Limits, PAGE_SIZE, Pages, SnapshotError, SnapshotId, SnapshotKind};

/// First 8 bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"SEEDSNAP";
/// Pages per compressed chunk written by this encoder (256 KiB of raw data).
pub const CHUNK_PAGES: u32 = 64;
/// Most pages per chunk a decoder accepts (one chunk decompresses to at most 4 MiB).
pub const MAX_CHUNK_PAGES: u32 = 1024;

/// Magic, version, header length, flags, file length.
pub(crate) const PREAMBLE_LEN: usize = 24;
const CRC_LEN: usize = 4;
/// Header fields other than the engine name's bytes.
const HEADER_FIXED_LEN: usize = 1 + 32 + 8 + 4 + 1 + 1 + 32 + 4 + 8 + 8;
/// Tag byte and 8 value bytes.
const GLOBAL_LEN: usize = 9;
/// First page, page count, kind.
const RUN_LEN: usize = 9;
/// LZ4 cannot expand its input by more than 255 times (a long match costs one byte per
/// 255 bytes it yields), so a chunk claiming more raw bytes than this ratio is corrupt.
/// This bounds what a decoder allocates for page data by the file size.
const MAX_LZ4_RATIO: u64 = 256;

type Result<T> = std::result::Result<T, SnapshotError>;

// ---------------------------------------------------------------------------------------
// Encoding

/// Where the bytes of data runs come from.
pub(crate) enum PageBytes<'a> {
    /// The linear memory itself: a run's bytes are at its page index.
    Memory(&'a [u8]),
    /// A packed buffer of the data runs one after the other ([`Pages`]).
    Packed(&'a [u8]),
}

/// Encodes a snapshot whose pages are `runs` with bytes from `bytes`.
pub(crate) fn encode_parts(
    header: &Header,
    globals: &[GlobalValue],
    host_state: &[u8],
    runs: &[PageRun],
    bytes: PageBytes<'_>,
) -> Result<Vec<u8>> {
    let engine = header.engine.as_bytes();
    if engine.is_empty() || engine.len() > MAX_ENGINE_NAME {
        return Err(SnapshotError::BadInput("engine name must be 1 to 64 bytes"));
    }
    if !header.memory_bytes.is_multiple_of(PAGE_SIZE as u64) {
        return Err(SnapshotError::BadInput("memory size is not a whole number of pages"));
    }
    if runs.last().is_some_and(|r| r.end() > header.memory_bytes / PAGE_SIZE as u64) {
        return Err(SnapshotError::BadInput("a page is beyond the memory size"));
    }
    let too_many = |_| SnapshotError::BadInput("too many globals, runs or chunks");
    let global_count = u32::try_from(globals.len()).map_err(too_many)?;
    let run_count = u32::try_from(runs.len()).map_err(too_many)?;
    let chunk_count: u64 = data_runs(runs).map(|r| u64::from(r.count.div_ceil(CHUNK_PAGES))).sum();
    let chunk_count = u32::try_from(chunk_count).map_err(too_many)?;
    let data_bytes: usize = data_runs(runs).map(|r| r.count as usize * PAGE_SIZE).sum();

    let header_len = HEADER_FIXED_LEN + engine.len();
    let fixed_len = PREAMBLE_LEN
        + header_len
        + CRC_LEN
        + 4
        + globals.len() * GLOBAL_LEN
        + 8
        + host_state.len()
        + 12
        + runs.len() * RUN_LEN
        + chunk_count as usize * 4
        + CRC_LEN;
    // Room for data compressed 4:1; more is grown as needed.
    let mut out = Vec::with_capacity(fixed_len + data_bytes / 4);

    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&0u64.to_le_bytes()); // file length, set at the end
    write_header(&mut out, header);
    let header_end = out.len();
    out.extend_from_slice(&0u32.to_le_bytes()); // header CRC, set at the end

    out.extend_from_slice(&global_count.to_le_bytes());
    for global in globals {
        let (tag, value) = match *global {
            GlobalValue::I32(v) => (0u8, u64::from(v as u32)),
            GlobalValue::I64(v) => (1, v as u64),
            GlobalValue::F32(v) => (2, u64::from(v)),
            GlobalValue::F64(v) => (3, v),
        };
        out.push(tag);
        out.extend_from_slice(&value.to_le_bytes());
    }

    out.extend_from_slice(&(host_state.len() as u64).to_le_bytes());
    out.extend_from_slice(host_state);

    out.extend_from_slice(&CHUNK_PAGES.to_le_bytes());
    out.extend_from_slice(&run_count.to_le_bytes());
    for run in runs {
        out.extend_from_slice(&run.first.to_le_bytes());
        out.extend_from_slice(&run.count.to_le_bytes());
        out.push(match run.kind {
            RunKind::Zero => 0,
            RunKind::Data => 1,
        });
    }
    out.extend_from_slice(&chunk_count.to_le_bytes());
    let mut slot = out.len();
    out.resize(slot + chunk_count as usize * 4, 0);

    // One scratch buffer for every chunk: compress into it, append what it holds.
    let chunk_bytes = CHUNK_PAGES as usize * PAGE_SIZE;
    let mut scratch = Vec::new();
    let mut packed_at = 0;
    for run in data_runs(runs) {
        let source = match bytes {
            PageBytes::Memory(memory) => memory.get(run_range(run)),
            PageBytes::Packed(packed) => {
                let len = run.count as usize * PAGE_SIZE;
                packed_at += len;
                packed.get(packed_at - len..packed_at)
            }
        };
        let source = source.ok_or(SnapshotError::BadInput("page data is missing"))?;
        for chunk in source.chunks(chunk_bytes) {
            let max = get_maximum_output_size(chunk.len());
            if scratch.len() < max {
                scratch.resize(max, 0);
            }
            let n =
                compress_into(chunk, &mut scratch).map_err(|_| SnapshotError::BadInput("page compression failed"))?;
            out.extend_from_slice(&scratch[..n]);
            out[slot..slot + 4].copy_from_slice(&(n as u32).to_le_bytes());
            slot += 4;
        }
    }

    let file_len = (out.len() + CRC_LEN) as u64;
    out[16..24].copy_from_slice(&file_len.to_le_bytes());
    let crc = crc32fast::hash(&out[..header_end]);
    out[header_end..header_end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn write_header(out: &mut Vec<u8>, header: &Header) {
    let (kind, parent, round) = match header.kind {
        SnapshotKind::Full => (0u8, None, 0),
        SnapshotKind::Incremental { parent } => (1, Some(parent), 0),
        SnapshotKind::PreCopy { round, parent } => (2, parent, round),
    };
    out.push(header.engine.len() as u8);
    out.extend_from_slice(header.engine.as_bytes());
    out.extend_from_slice(&header.image_hash);
    out.extend_from_slice(&header.memory_bytes.to_le_bytes());
    out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    out.push(kind);
    out.push(u8::from(parent.is_some()));
    out.extend_from_slice(&parent.map_or([0; 32], |p| p.0));
    out.extend_from_slice(&round.to_le_bytes());
    out.extend_from_slice(&header.virtual_ns.to_le_bytes());
    out.extend_from_slice(&header.wall_ns.to_le_bytes());
}

// ---------------------------------------------------------------------------------------
// Decoding

/// A cursor over bytes whose length is already known to be complete: running out is
/// corruption (a length field lies), not truncation.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                self.pos += n;
                Ok(&self.bytes[self.pos - n..self.pos])
            }
            _ => Err(corrupt(format!("{what} needs {n} bytes, {left} left"))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        rest
    }
}

fn corrupt(detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(detail.into())
}

/// The fixed 24 bytes at the start.
struct Preamble {
    header_len: usize,
    flags: u32,
    file_len: u64,
}

fn read_preamble(bytes: &[u8]) -> Result<Preamble> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(SnapshotError::BadMagic);
    }
    if let Some(v) = bytes.get(8..10) {
        let version = u16::from_le_bytes([v[0], v[1]]);
        if version > FORMAT_VERSION {
            return Err(SnapshotError::FutureVersion { found: version, supported: FORMAT_VERSION });
        }
        if version == 0 {
            return Err(corrupt("format version 0"));
        }
    }
    let Some(pre) = bytes.get(..PREAMBLE_LEN) else {
        return Err(SnapshotError::Truncated {
            what: "preamble",
            needed: PREAMBLE_LEN as u64,
            available: bytes.len() as u64,
        });
    };
    let mut r = Reader::new(&pre[10..]);
    let header_len = usize::from(u16::from_le_bytes(r.array("header length")?));
    let flags = r.u32("flags")?;
    let file_len = r.u64("file length")?;
    Ok(Preamble { header_len, flags, file_len })
}

/// Checks and parses preamble and header; returns them and where the body starts.
fn read_head(bytes: &[u8], verify: bool) -> Result<(Preamble, Header, usize)> {
    let pre = read_preamble(bytes)?;
    let header_end = PREAMBLE_LEN + pre.header_len;
    let body_start = header_end + CRC_LEN;
    let Some(crc) = bytes.get(header_end..body_start) else {
        return Err(SnapshotError::Truncated {
            what: "header",
            needed: body_start as u64,
            available: bytes.len() as u64,
        });
    };
    if verify {
        let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let found = crc32fast::hash(&bytes[..header_end]);
        if expected != found {
            return Err(SnapshotError::ChecksumMismatch { what: "header", expected, found });
        }
    }
    if pre.flags != 0 {
        return Err(corrupt(format!("unknown flags {:#x}", pre.flags)));
    }
    let header = parse_header(&bytes[PREAMBLE_LEN..header_end])?;
    Ok((pre, header, body_start))
}

fn parse_header(bytes: &[u8]) -> Result<Header> {
    let mut r = Reader::new(bytes);
    let engine_len = r.u8("engine name length")?;
    if engine_len == 0 || usize::from(engine_len) > MAX_ENGINE_NAME {
        return Err(corrupt(format!("engine name of {engine_len} bytes")));
    }
    let engine = std::str::from_utf8(r.take(u64::from(engine_len), "engine name")?)
        .map_err(|_| corrupt("engine name is not UTF-8"))?
        .to_owned();
    let image_hash = r.array("image hash")?;
    let memory_bytes = r.u64("memory size")?;
    let page_size = r.u32("page size")?;
    let kind = r.u8("kind")?;
    let has_parent = r.u8("parent flag")?;
    let parent = r.array::<32>("parent id")?;
    let round = r.u32("round")?;
    let virtual_ns = r.u64("virtual time")?;
    let wall_ns = r.u64("wall time")?;
    if r.remaining() != 0 {
        return Err(corrupt(format!("header has {} unknown bytes", r.remaining())));
    }
    if page_size as usize != PAGE_SIZE {
        return Err(corrupt(format!("page size {page_size}, expected {PAGE_SIZE}")));
    }
    if !memory_bytes.is_multiple_of(PAGE_SIZE as u64) {
        return Err(corrupt(format!("memory size {memory_bytes} is not whole pages")));
    }
    let parent = match has_parent {
        0 if parent == [0; 32] => None,
        0 => return Err(corrupt("parent id without parent flag")),
        1 => Some(SnapshotId(parent)),
        n => return Err(corrupt(format!("parent flag {n}"))),
    };
    let kind = match (kind, parent, round) {
        (0, None, 0) => SnapshotKind::Full,
        (1, Some(parent), 0) => SnapshotKind::Incremental { parent },
        (2, parent, round) => SnapshotKind::PreCopy { round, parent },
        (0, ..) => return Err(corrupt("full snapshot with a parent or round")),
        (1, ..) => {
            return Err(corrupt("incremental snapshot without parent or with a round"));
        }
        (k, ..) => return Err(corrupt(format!("unknown snapshot kind {k}"))),
    };
    Ok(Header { engine, image_hash, memory_bytes, kind, virtual_ns, wall_ns })
}

/// Reads the header only; see [`Snapshot::peek_header`](crate::Snapshot::peek_header).
pub(crate) fn peek_header(bytes: &[u8]) -> Result<Header> {
    read_head(bytes, true).map(|(_, header, _)| header)
}

/// Checks the frame, checksums (with `verify`) and structure of a whole snapshot.
pub(crate) fn parse<'a>(bytes: &'a [u8], limits: &Limits, verify: bool) -> Result<SnapshotView<'a>> {
    let pre = read_preamble(bytes)?;
    if pre.file_len > limits.max_file_bytes {
        return Err(SnapshotError::TooLarge { what: "file", limit: limits.max_file_bytes, found: pre.file_len });
    }
    let len = bytes.len() as u64;
    if len < pre.file_len {
        return Err(SnapshotError::Truncated { what: "file", needed: pre.file_len, available: len });
    }
    if len > pre.file_len {
        return Err(corrupt(format!("{} bytes after the end", len - pre.file_len)));
    }
    let min_len = (PREAMBLE_LEN + pre.header_len + 2 * CRC_LEN) as u64;
    if pre.file_len < min_len {
        return Err(corrupt(format!("file length {} is below the header's {min_len}", pre.file_len)));
    }
    let (_, header, body_start) = read_head(bytes, verify)?;
    let body_end = bytes.len() - CRC_LEN;
    if verify {
        let t = &bytes[body_end..];
        let expected = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let found = crc32fast::hash(&bytes[..body_end]);
        if expected != found {
            return Err(SnapshotError::ChecksumMismatch { what: "file", expected, found });
        }
    }
    if header.memory_bytes > limits.max_memory_bytes {
        return Err(SnapshotError::TooLarge {
            what: "memory",
            limit: limits.max_memory_bytes,
            found: header.memory_bytes,
        });
    }
    parse_body(&bytes[body_start..body_end], header, limits)
}

fn parse_body<'a>(body: &'a [u8], header: Header, limits: &Limits) -> Result<SnapshotView<'a>> {
    let mut r = Reader::new(body);

    let count = r.u32("globals count")?;
    if count > limits.max_globals {
        return Err(SnapshotError::TooLarge {
            what: "globals",
            limit: u64::from(limits.max_globals),
            found: u64::from(count),
        });
    }
    let records = r.take(u64::from(count) * GLOBAL_LEN as u64, "globals")?;
    let mut globals = Vec::with_capacity(count as usize);
    for rec in records.chunks_exact(GLOBAL_LEN) {
        let mut value = [0; 8];
        value.copy_from_slice(&rec[1..]);
        let value = u64::from_le_bytes(value);
        let narrow = || u32::try_from(value).map_err(|_| corrupt("32-bit global with high bits set"));
        globals.push(match rec[0] {
            0 => GlobalValue::I32(narrow()? as i32),
            1 => GlobalValue::I64(value as i64),
            2 => GlobalValue::F32(narrow()?),
            3 => GlobalValue::F64(value),
            t => return Err(corrupt(format!("unknown global type {t}"))),
        });
    }

    let host_len = r.u64("host state length")?;
    if host_len > limits.max_host_state_bytes {
        return Err(SnapshotError::TooLarge {
            what: "host state",
            limit: limits.max_host_state_bytes,
            found: host_len,
        });
    }
    let host_state = r.take(host_len, "host state")?;

    let pages = parse_pages(&mut r, header.memory_bytes / PAGE_SIZE as u64)?;
    Ok(SnapshotView { header, globals, host_state, pages })
}

fn parse_pages<'a>(r: &mut Reader<'a>, memory_pages: u64) -> Result<PagesView<'a>> {
    let chunk_pages = r.u32("chunk size")?;
    if chunk_pages == 0 || chunk_pages > MAX_CHUNK_PAGES {
        return Err(corrupt(format!("chunks of {chunk_pages} pages")));
    }
    let run_count = r.u32("run count")?;
    if u64::from(run_count) > memory_pages {
        return Err(corrupt(format!("{run_count} page runs in {memory_pages} pages")));
    }
    let records = r.take(u64::from(run_count) * RUN_LEN as u64, "page runs")?;
    let mut runs: Vec<PageRun> = Vec::with_capacity(run_count as usize);
    let mut chunks_expected = 0u64;
    let mut data_pages = 0u64;
    for rec in records.chunks_exact(RUN_LEN) {
        let first = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let count = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let kind = match rec[8] {
            0 => RunKind::Zero,
            1 => RunKind::Data,
            k => return Err(corrupt(format!("unknown page run kind {k}"))),
        };
        let run = PageRun { first, count, kind };
        if count == 0 {
            return Err(corrupt(format!("empty page run at page {first}")));
        }
        if run.end() > memory_pages {
            return Err(corrupt(format!("page {} is beyond memory of {memory_pages} pages", run.end() - 1)));
        }
        if let Some(prev) = runs.last() {
            if u64::from(first) < prev.end() {
                return Err(corrupt(format!("page runs unsorted or overlapping at page {first}")));
            }
            if u64::from(first) == prev.end() && kind == prev.kind {
                return Err(corrupt(format!("page runs not merged at page {first}")));
            }
        }
        if kind == RunKind::Data {
            chunks_expected += u64::from(count.div_ceil(chunk_pages));
            data_pages += u64::from(count);
        }
        runs.push(run);
    }
    let chunk_count = r.u32("chunk count")?;
    if u64::from(chunk_count) != chunks_expected {
        return Err(corrupt(format!("{chunk_count} chunks, the runs need {chunks_expected}")));
    }
    let table = r.take(u64::from(chunk_count) * 4, "chunk table")?;
    let data = r.rest();

    let view = PagesView { runs, chunk_pages, table, data, data_pages };
    // Check every chunk's length against what it must decompress to, so that page data
    // (allocated by `to_pages`) is bounded by the file size, not only by the limits.
    let mut chunks = view.chunks();
    for run in data_runs(&view.runs) {
        let mut left = run.count;
        while left > 0 {
            let pages = left.min(chunk_pages);
            left -= pages;
            let raw = u64::from(pages) * PAGE_SIZE as u64;
            let compressed = chunks.next()?;
            let len = compressed.len() as u64;
            if len == 0 || len > get_maximum_output_size(raw as usize) as u64 || raw > len * MAX_LZ4_RATIO {
                return Err(corrupt(format!("chunk of {len} bytes cannot hold {raw} bytes")));
            }
        }
    }
    if chunks.at != data.len() {
        return Err(corrupt(format!("chunks hold {} bytes, {} present", chunks.at, data.len())));
    }
    Ok(view)
}

/// Walks the chunk table and chunk data in order.
struct Chunks<'a> {
    table: &'a [u8],
    data: &'a [u8],
    at: usize,
}

impl<'a> Chunks<'a> {
    fn next(&mut self) -> Result<&'a [u8]> {
        let Some((len, rest)) = self.table.split_first_chunk::<4>() else {
            return Err(corrupt("chunk table too short"));
        };
        self.table = rest;
        let len = u32::from_le_bytes(*len) as usize;
        let chunk = self
            .data
            .get(self.at..)
            .and_then(|d| d.get(..len))
            .ok_or_else(|| corrupt(format!("chunk of {len} bytes beyond the data")))?;
        self.at += len;
        Ok(chunk)
    }

    /// Decompresses the chunks of one data run into `dest` (its raw bytes).
    fn decompress_run(&mut self, dest: &mut [u8], chunk_pages: u32) -> Result<()> {
        for part in dest.chunks_mut(chunk_pages as usize * PAGE_SIZE) {
            let chunk = self.next()?;
            match decompress_into(chunk, part) {
                Ok(n) if n == part.len() => {}
                Ok(n) => {
                    return Err(corrupt(format!("chunk decompressed to {n} bytes, not {}", part.len())));
                }
                Err(e) => return Err(corrupt(format!("chunk does not decompress: {e}"))),
            }
        }
        Ok(())
    }
}

/// Writes `jobs` (destinations relative to the whole memory) into `memory`, which starts
/// at byte `base` of it.
fn apply_jobs(memory: &mut [u8], base: usize, jobs: Vec<(std::ops::Range<usize>, Option<&[u8]>)>) -> Result<()> {
    for (range, chunk) in jobs {
        let dest = &mut memory[range.start - base..range.end - base];
        match chunk {
            None => dest.fill(0),
            Some(chunk) => match decompress_into(chunk, dest) {
                Ok(n) if n == dest.len() => {}
                Ok(n) => return Err(corrupt(format!("chunk decompressed to {n} bytes, not {}", dest.len()))),
                Err(e) => return Err(corrupt(format!("chunk does not decompress: {e}"))),
            },
        }
    }
    Ok(())
}

/// The pages of a [`SnapshotView`]: runs parsed, data still compressed in the file bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagesView<'a> {
    runs: Vec<PageRun>,
    chunk_pages: u32,
    table: &'a [u8],
    data: &'a [u8],
    data_pages: u64,
}

impl<'a> PagesView<'a> {
    fn chunks(&self) -> Chunks<'a> {
        Chunks { table: self.table, data: self.data, at: 0 }
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
        self.data_pages as usize
    }

    /// Bytes of compressed page data.
    pub fn compressed_bytes(&self) -> usize {
        self.data.len()
    }

    /// Decompresses the data pages straight into `memory` and zeroes the zero pages;
    /// other pages are left as they are. Fails before writing anything if a page lies
    /// beyond `memory`; a chunk that does not decompress (possible only in a crafted file
    /// whose checksums are right) fails with [`SnapshotError::Corrupt`] and leaves memory
    /// partly written.
    pub fn apply_to(&self, memory: &mut [u8]) -> Result<()> {
        self.apply(memory, false)
    }

    /// Like [`apply_to`](Self::apply_to), and also zeroes every page not recorded.
    pub fn apply_full_to(&self, memory: &mut [u8]) -> Result<()> {
        self.apply(memory, true)
    }

    /// Like [`apply_to`](Self::apply_to), decompressing on up to `threads` threads: the
    /// chunks are independent, so a large restore (a migration's final step, say) can
    /// use every core. Small snapshots are applied on the calling thread.
    pub fn apply_to_parallel(&self, memory: &mut [u8], threads: usize) -> Result<()> {
        const MIN_PAGES_PER_THREAD: u64 = 512;
        let memory_pages = (memory.len() / PAGE_SIZE) as u64;
        let in_bounds = self.runs.last().is_none_or(|r| r.end() <= memory_pages);
        if threads <= 1 || self.data_pages < 2 * MIN_PAGES_PER_THREAD || !in_bounds {
            // The serial path also reports out-of-bounds pages precisely.
            return self.apply_to(memory);
        }
        // One job per chunk or zero run, in page order; their destinations are disjoint.
        let chunk_bytes = self.chunk_pages as usize * PAGE_SIZE;
        let mut jobs: Vec<(std::ops::Range<usize>, Option<&'a [u8]>)> = Vec::new();
        let mut chunks = self.chunks();
        for run in &self.runs {
            let range = run_range(run);
            match run.kind {
                RunKind::Zero => jobs.push((range, None)),
                RunKind::Data => {
                    for start in range.clone().step_by(chunk_bytes) {
                        jobs.push((start..(start + chunk_bytes).min(range.end), Some(chunks.next()?)));
                    }
                }
            }
        }
        let total: usize = jobs.iter().map(|(r, _)| r.len()).sum();
        let per_thread = total.div_ceil(threads);
        std::thread::scope(|scope| {
            let mut rest: &mut [u8] = memory;
            let mut rest_base = 0usize;
            let mut workers = Vec::new();
            let mut group = Vec::new();
            let mut group_bytes = 0;
            let mut jobs = jobs.into_iter().peekable();
            while let Some(job) = jobs.next() {
                group_bytes += job.0.len();
                group.push(job);
                if group_bytes >= per_thread || jobs.peek().is_none() {
                    let end = group.last().map_or(rest_base, |(r, _)| r.end);
                    let (head, tail) = std::mem::take(&mut rest).split_at_mut(end - rest_base);
                    let (base, work) = (rest_base, std::mem::take(&mut group));
                    rest = tail;
                    rest_base = end;
                    group_bytes = 0;
                    workers.push(scope.spawn(move || apply_jobs(head, base, work)));
                }
            }
            workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| Err(corrupt("decompression panicked"))))
        })
    }

    fn apply(&self, memory: &mut [u8], full: bool) -> Result<()> {
        let mut chunks = self.chunks();
        apply_runs(&self.runs, memory, full, |_, dest| chunks.decompress_run(dest, self.chunk_pages))
    }

    /// Decompresses into an owned [`Pages`].
    pub fn to_pages(&self) -> Result<Pages> {
        let mut data = vec![0; self.data_pages() * PAGE_SIZE];
        let mut chunks = self.chunks();
        let mut at = 0;
        for run in data_runs(&self.runs) {
            let len = run.count as usize * PAGE_SIZE;
            chunks.decompress_run(&mut data[at..at + len], self.chunk_pages)?;
            at += len;
        }
        Ok(Pages::from_parts(self.runs.clone(), data))
    }
}

/// A decoded snapshot that borrows the file bytes and keeps page data compressed until
/// it is applied: the fast restore path (no copy of the pages in between).
///
/// [`parse`](Self::parse) verifies checksums, limits and structure; only decompression
/// is left for [`PagesView::apply_to`] or [`to_snapshot`](Self::to_snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotView<'a> {
    /// What the snapshot says about itself.
    pub header: Header,
    /// The VM's globals, in the engine's order.
    pub globals: Vec<GlobalValue>,
    /// The engine's serialized host state.
    pub host_state: &'a [u8],
    /// The memory pages, still compressed.
    pub pages: PagesView<'a>,
}

impl<'a> SnapshotView<'a> {
    /// Checks and parses `bytes`, allocating only within `limits`.
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<SnapshotView<'a>> {
        parse(bytes, limits, true)
    }

    /// Decompresses into an owned [`Snapshot`](crate::Snapshot).
    pub fn to_snapshot(&self) -> Result<crate::Snapshot> {
        Ok(crate::Snapshot {
            header: self.header.clone(),
            globals: self.globals.clone(),
            host_state: self.host_state.to_vec(),
            pages: self.pages.to_pages()?,
        })
    }
}
