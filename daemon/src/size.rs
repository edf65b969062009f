//! Sizes on the command line: a number of bytes with an optional K, M, G or T suffix (either
//! case; powers of 1024). The one parser of every flag that takes a size; each flag adds its
//! own rule on top (`serve --cache-size`: a multiple of 2 MiB; `bench --size`: 4 KiB pages,
//! 2 MiB to 1 TiB; `probe --write`: a `0x` prefix for hexadecimal).

use std::fmt;
use std::num::ParseIntError;

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// The digits are not a number (empty, signs, other characters).
    Number(ParseIntError),
    /// A letter other than K, M, G or T at the end.
    Suffix(char),
    /// More than 2^64 - 1 bytes.
    TooLarge,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Number(e) => write!(f, "{e}"),
            SizeError::Suffix(c) => write!(f, "unknown size suffix {c:?}"),
            SizeError::TooLarge => write!(f, "too large"),
        }
    }
}

impl std::error::Error for SizeError {}

/// `s` (surrounding whitespace ignored) in bytes. Never panics; overflow is an error.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(SizeError::Suffix(c)),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    digits
        .parse::<u64>()
        .map_err(SizeError::Number)?
        .checked_mul(1 << shift)
        .ok_or(SizeError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::{parse_size, SizeError};

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        assert_eq!(parse_size("3K"), Ok(3 << 10));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size(" 64m\n"), Ok(64 << 20));
        assert_eq!(parse_size("16777215T"), Ok(((1 << 24) - 1) << 40));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(matches!(parse_size(""), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("x"), Err(SizeError::Suffix('x'))));
        assert_eq!(parse_size("2Q"), Err(SizeError::Suffix('Q')));
        assert!(matches!(parse_size("K"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("-1M"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("1.5G"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("1 M"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("0x10"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("1é"), Err(SizeError::Number(_))));
        assert_eq!(parse_size("16777216T"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("99999999999T"), Err(SizeError::TooLarge));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Number(_))
        ));
    }
}
