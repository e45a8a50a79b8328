//! The Linux image file: one file holding a kernel, an initramfs and a read-only root filesystem, with a manifest
//! that says how to run them. Its blake3 hash is the image's identity, as for a WebAssembly image, so the same file
//! is the same image on every site; the engine unpacks it once per site and every phone of it shares the root.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! "VMILINUX"  u32 format version  u32 manifest length  manifest (JSON)  part 0 bytes  part 1 bytes  ...
//! ```
//!
//! The manifest lists the parts in file order with their sizes and blake3 hashes (checked at load).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::QemuError;

/// The first bytes of every Linux image file.
pub const MAGIC: &[u8; 8] = b"VMILINUX";
/// The layout version this engine writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The parts an image must have, by name: the kernel, the initramfs, the root filesystem.
pub const PARTS: [&str; 3] = ["vmlinuz", "initrd", "rootfs.sqfs"];
/// Largest manifest read (it is a few hundred bytes).
const MAX_MANIFEST: usize = 64 << 10;

/// How to run an image's phones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// What the image is, for people.
    pub name: String,
    /// Guest RAM of each phone, MiB (all mutable state lives there, root overlay included).
    pub memory_mib: u32,
    /// Virtual CPUs of each phone.
    pub cpus: u32,
    /// Whether phones get a network: QEMU's user-mode network, fenced off the site's own addresses (`network`).
    #[serde(default)]
    pub network: bool,
    /// The kernel's command line.
    pub cmdline: String,
    /// The parts, in file order.
    pub parts: Vec<Part>,
}

/// One part of an image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// One of [`PARTS`].
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// blake3 of its bytes, hex.
    pub blake3: String,
}

/// The defaults of `vmi image build --linux`: enough RAM for the session and a browser under TCG.
impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            name: "Debian bookworm phone (cage, foot, nano, dillo)".into(),
            memory_mib: 512,
            cpus: 1,
            network: false,
            cmdline: "console=ttyS0 quiet".into(),
            parts: Vec::new(),
        }
    }
}

/// Whether `bytes` start like a Linux image file (and so belong to this engine).
pub fn is_linux_image(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Writes an image file of `manifest` (its `parts` are filled in here) and the parts' bytes, in [`PARTS`] order.
pub fn pack(mut manifest: Manifest, parts: &[(&str, &[u8])]) -> Result<Vec<u8>, QemuError> {
    for (want, (name, _)) in PARTS.iter().zip(parts) {
        if want != name {
            return Err(QemuError::Image(format!("part {name} given where {want} belongs")));
        }
    }
    if parts.len() != PARTS.len() {
        return Err(QemuError::Image(format!("{} parts given, an image has {}", parts.len(), PARTS.len())));
    }
    manifest.parts = parts
        .iter()
        .map(|(name, bytes)| Part {
            name: (*name).to_owned(),
            bytes: bytes.len() as u64,
            blake3: blake3::hash(bytes).to_hex().to_string(),
        })
        .collect();
    check_manifest(&manifest)?;
    let json = serde_json::to_vec(&manifest).map_err(|e| QemuError::Image(format!("manifest: {e}")))?;
    let total: usize = parts.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(16 + json.len() + total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, bytes) in parts {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// An image file read in place: its manifest and its parts' bytes.
#[derive(Debug)]
pub struct ImageFile<'a> {
    /// How to run it.
    pub manifest: Manifest,
    /// The parts' bytes, in manifest order.
    pub parts: Vec<(&'a str, &'a [u8])>,
}

/// Reads an image file, checking its layout and every part's hash.
pub fn parse(bytes: &[u8]) -> Result<ImageFile<'_>, QemuError> {
    let bad = |why: &str| QemuError::Image(why.to_owned());
    if !is_linux_image(bytes) {
        return Err(bad("not a Linux image file (no VMILINUX magic)"));
    }
    let word = |at: usize| -> Result<u32, QemuError> {
        let b = bytes.get(at..at + 4).ok_or_else(|| bad("the file ends inside its header"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let version = word(8)?;
    if version != FORMAT_VERSION {
        return Err(QemuError::Image(format!("format version {version}; this engine reads {FORMAT_VERSION}")));
    }
    let len = word(12)? as usize;
    if len > MAX_MANIFEST {
        return Err(QemuError::Image(format!("a manifest of {len} bytes (at most {MAX_MANIFEST})")));
    }
    let json = bytes.get(16..16 + len).ok_or_else(|| bad("the file ends inside its manifest"))?;
    let manifest: Manifest = serde_json::from_slice(json).map_err(|e| QemuError::Image(format!("manifest: {e}")))?;
    check_manifest(&manifest)?;
    let mut at = 16 + len;
    let mut parts = Vec::new();
    for part in &manifest.parts {
        let end = usize::try_from(part.bytes).ok().and_then(|n| at.checked_add(n)).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| QemuError::Image(format!("the file ends inside part {}", part.name)))?;
        let data = &bytes[at..end];
        if blake3::hash(data).to_hex().as_str() != part.blake3 {
            return Err(QemuError::Image(format!("part {} does not match its hash", part.name)));
        }
        parts.push((PARTS.iter().find(|p| **p == part.name).copied().unwrap_or("?"), data));
        at = end;
    }
    if at != bytes.len() {
        return Err(QemuError::Image(format!("{} bytes after the last part", bytes.len() - at)));
    }
    Ok(ImageFile { manifest, parts })
}

/// Packs the parts in `dir` (`vmlinuz`, `initrd`, `rootfs.sqfs`, as `scripts/build-linux-image` leaves them)
/// into an image file.
pub fn pack_dir(manifest: Manifest, dir: &Path) -> Result<Vec<u8>, QemuError> {
    let mut parts = Vec::new();
    for name in PARTS {
        let path = dir.join(name);
        parts.push(std::fs::read(&path).map_err(QemuError::io(format!("reading {}", path.display())))?);
    }
    pack(manifest, &PARTS.iter().copied().zip(parts.iter().map(Vec::as_slice)).collect::<Vec<_>>())
}

/// The script that builds an image's parts from Debian's packages: `VMI_LINUX_IMAGE_SCRIPT`, else the source
/// tree's `scripts/build-linux-image`, else the installed `/usr/share/vmi/build-linux-image`.
pub fn build_script() -> PathBuf {
    if let Some(p) = std::env::var_os("VMI_LINUX_IMAGE_SCRIPT") {
        return PathBuf::from(p);
    }
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-linux-image");
    if in_tree.exists() { in_tree } else { PathBuf::from("/usr/share/vmi/build-linux-image") }
}

/// Builds an image from Debian's packages with [`build_script`] (its parts cached by the script), working in
/// `work_dir`, and packs it with `manifest`.
pub fn build(manifest: Manifest, work_dir: &Path) -> Result<Vec<u8>, QemuError> {
    let script = build_script();
    let status = std::process::Command::new(&script)
        .arg(work_dir)
        .status()
        .map_err(QemuError::io(format!("running {}", script.display())))?;
    if !status.success() {
        return Err(QemuError::Image(format!("{} failed ({status}); its output says why", script.display())));
    }
    pack_dir(manifest, work_dir)
}

fn check_manifest(m: &Manifest) -> Result<(), QemuError> {
    let names: Vec<&str> = m.parts.iter().map(|p| p.name.as_str()).collect();
    if names != PARTS {
        return Err(QemuError::Image(format!("parts {names:?}; an image has {PARTS:?} in that order")));
    }
    if !(128..=16384).contains(&m.memory_mib) {
        return Err(QemuError::Image(format!("memory of {} MiB (128 to 16384)", m.memory_mib)));
    }
    if !(1..=16).contains(&m.cpus) {
        return Err(QemuError::Image(format!("{} CPUs (1 to 16)", m.cpus)));
    }
    // The command line goes to QEMU as one argument; a control character has no business there.
    if m.cmdline.len() > 1024 || m.cmdline.chars().any(|c| c.is_control()) {
        return Err(bad_cmdline());
    }
    Ok(())
}

fn bad_cmdline() -> QemuError {
    QemuError::Image("a kernel command line of at most 1024 characters, no control characters".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        pack(Manifest::default(), &[("vmlinuz", b"kernel"), ("initrd", b"init"), ("rootfs.sqfs", b"root")])
            .expect("pack")
    }

    #[test]
    fn an_image_reads_back_with_its_parts() {
        let bytes = sample();
        assert!(is_linux_image(&bytes));
        let file = parse(&bytes).expect("parse");
        assert_eq!(file.parts, vec![("vmlinuz", &b"kernel"[..]), ("initrd", b"init"), ("rootfs.sqfs", b"root")]);
        assert_eq!(file.manifest.memory_mib, 512);
    }

    #[test]
    fn damaged_or_cut_images_are_refused_with_the_reason() {
        let bytes = sample();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(parse(&flipped).expect_err("flipped").to_string().contains("rootfs.sqfs does not match"));
        assert!(parse(&bytes[..bytes.len() - 2]).expect_err("cut").to_string().contains("ends inside part"));
        assert!(parse(b"VMILINUX").expect_err("short").to_string().contains("header"));
        assert!(parse(b"\0asm").expect_err("wasm").to_string().contains("magic"));
        let mut longer = bytes;
        longer.push(0);
        assert!(parse(&longer).expect_err("longer").to_string().contains("after the last part"));
    }

    #[test]
    fn a_manifest_out_of_bounds_is_refused() {
        let m = Manifest { memory_mib: 64, ..Manifest::default() };
        let e = pack(m, &[("vmlinuz", b"k"), ("initrd", b"i"), ("rootfs.sqfs", b"r")]).expect_err("64 MiB");
        assert!(e.to_string().contains("64 MiB"), "{e}");
        let e = pack(Manifest::default(), &[("initrd", b"i")]).expect_err("order");
        assert!(e.to_string().contains("where vmlinuz belongs"), "{e}");
    }
}
