//! Standard base64 decoding (RFC 4648 section 4) of TSIG secrets, through the
//! `base64` crate: padding optional and whitespace ignored, as BIND's key files
//! and `tsig-keygen` output allow.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// The standard alphabet, padding optional.
const STANDARD_PADDING_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes standard base64; padding is optional, whitespace is ignored.
pub(crate) fn decode(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD_PADDING_OPTIONAL
        .decode(compact)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9vYmE", "fooba"),
            (" Zm9v\nYmFy ", "foobar"),
        ];
        for (input, expected) in cases {
            assert_eq!(decode(input).as_deref(), Ok(expected.as_bytes()), "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode("Zm9v!").is_err());
        assert!(decode("Zg==Zg").is_err());
        assert!(decode("Z").is_err());
    }
}
