//! The project's WebAssembly, compiled for wasm32 by this crate's build script: the
//! default phone image (`guest/vmi-phone`; engines load it like any other image, nothing
//! is special-cased) and the module a browser runs a checked-out phone with
//! (`crates/vmi-browser-phone`, served by every site to its page).

/// The default phone image's WebAssembly bytes.
pub const PHONE_WASM: &[u8] = include_bytes!(env!("VMI_PHONE_WASM"));

/// `vmi-browser-phone` compiled for the page (`/offline-phone.wasm`).
pub const BROWSER_PHONE_WASM: &[u8] = include_bytes!(env!("VMI_BROWSER_PHONE_WASM"));

/// Default screen size of the phone image, in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (720, 1280);

#[cfg(test)]
mod tests {
    #[test]
    fn image_is_a_wasm_module() {
        assert_eq!(&super::PHONE_WASM[..4], b"\0asm");
        assert_eq!(&super::BROWSER_PHONE_WASM[..4], b"\0asm");
    }
}
