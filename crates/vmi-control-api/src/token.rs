//! Bearer tokens and other random ids: [`TOKEN_BYTES`] random bytes as lowercase hex.

use std::io::Read;

/// Bytes of randomness in a device token; the token is their lowercase hex, twice as many characters.
pub const TOKEN_BYTES: usize = 32;

/// A new random token (a device token, a lease id): [`TOKEN_BYTES`] bytes from `/dev/urandom` as lowercase hex.
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_lowercase_hex() {
        let (a, b) = (generate_token().expect("token"), generate_token().expect("token"));
        assert_eq!(a.len(), TOKEN_BYTES * 2);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
        assert_ne!(a, b);
    }
}
