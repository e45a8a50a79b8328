//! A small, bounds-checked binary writer and reader for the host-state blob.
//!
//! Little-endian integers, byte strings prefixed by a u32 length. The reader checks every
//! length against the bytes left before it allocates, so hostile input costs nothing.

use crate::GuestAbiError;

/// Appends values to a buffer.
#[derive(Default, Debug)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A `u8`.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// A little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
    /// Length-prefixed UTF-8.
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads what a [`Writer`] wrote.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

fn short(what: &str) -> GuestAbiError {
    GuestAbiError::HostState(format!("host state ends inside {what}"))
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GuestAbiError> {
        if self.buf.len() < n {
            return Err(short(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, GuestAbiError> {
        Ok(self.take(1, "a byte")?[0])
    }
    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, GuestAbiError> {
        let b = self.take(4, "a u32")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, GuestAbiError> {
        let b = self.take(8, "a u64")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], GuestAbiError> {
        let n = self.u32()? as usize;
        self.take(n, "a byte string")
    }
    /// Length-prefixed UTF-8.
    pub fn string(&mut self) -> Result<String, GuestAbiError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| GuestAbiError::HostState("text is not UTF-8".into()))
    }
    /// An element count, refused above `max`.
    pub fn count(&mut self, max: usize, what: &str) -> Result<usize, GuestAbiError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(GuestAbiError::HostState(format!("{n} {what}, at most {max} allowed")));
        }
        Ok(n)
    }
    /// Checks that nothing is left over.
    pub fn finish(&self) -> Result<(), GuestAbiError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(GuestAbiError::HostState(format!("{} unexpected bytes after host state", self.buf.len())))
        }
    }
}
