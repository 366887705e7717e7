//! Constant-time comparison of shared secrets.

use subtle::ConstantTimeEq;

/// Whether `presented` equals `expected`, without the time taken depending on where they
/// first differ. (The lengths may leak; secrets are fixed-length in practice.)
pub fn equal(presented: &[u8], expected: &[u8]) -> bool {
    presented.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares_whole_values() {
        assert!(super::equal(b"s3cret", b"s3cret"));
        assert!(!super::equal(b"s3cret", b"s3creT"));
        assert!(!super::equal(b"s3cret", b"s3cre"));
        assert!(!super::equal(b"", b"x"));
    }
}
