//! The default phone image, compiled from `guest/vmi-phone` for wasm32 by this crate's
//! build script. Engines load it like any other image; nothing here is special-cased.

/// The default phone image's WebAssembly bytes.
pub const PHONE_WASM: &[u8] = include_bytes!(env!("VMI_PHONE_WASM"));

/// Default screen size of the phone image, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (720, 1280);

#[cfg(test)]
mod tests {
    #[test]
    fn image_is_a_wasm_module() {
        assert_eq!(&super::PHONE_WASM[..4], b"\0asm");
    }
}
