//! What this build is: its version, the commit it was built from and the SHA-256 of the XDP
//! object it embeds (both computed by build.rs). `--version` prints them; the controller records
//! them in the pinned META map, so `status` shows which build's program the kernel runs and
//! whether it is the one this binary carries.

/// The crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit built (12 hex digits), or `unknown`.
pub const GIT_COMMIT: &str = env!("SMTP_XDP_GIT_COMMIT");
/// SHA-256 of the embedded XDP object, in hex.
pub const OBJECT_SHA256: &str = env!("SMTP_XDP_OBJECT_SHA256");

/// Hex digits of the object hash shown in text (the full hash is in `status --json`).
pub const SHORT_HASH: usize = 16;

/// `--version`'s line after the program name.
pub fn line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{VERSION} (commit {GIT_COMMIT}, XDP object sha256:{})",
            &OBJECT_SHA256[..SHORT_HASH.min(OBJECT_SHA256.len())]
        )
    })
}

/// The version recorded in META: `VERSION` and the commit, e.g. `0.1.0 1a2b3c4d5e6f`.
pub fn recorded() -> String {
    format!("{VERSION} {GIT_COMMIT}")
}

/// The object hash as bytes (zero when build.rs gave something that is not 64 hex digits).
pub fn object_sha256() -> [u8; 32] {
    let mut out = [0u8; 32];
    let hex = OBJECT_SHA256.as_bytes();
    if hex.len() != 64 {
        return [0; 32];
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        match std::str::from_utf8(pair)
            .ok()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
        {
            Some(b) => out[i] = b,
            None => return [0; 32],
        }
    }
    out
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_embedded_objects() {
        use sha2::Digest as _;
        let actual = sha2::Sha256::digest(crate::program::OBJECT);
        assert_eq!(hex(&actual), OBJECT_SHA256);
        assert_eq!(object_sha256(), actual[..]);
        assert!(line().starts_with(VERSION), "{}", line());
        assert!(line().contains(&OBJECT_SHA256[..SHORT_HASH]), "{}", line());
    }
}
