//! Numbers with a unit, as PostgreSQL and Patroni write sizes and
//! durations (`30min`, `16 kB`, `500ms`).

/// Splits `text` into its leading whole number and the unit after it
/// (trimmed, possibly empty): `"16 kB"` is `(16, "kB")`. `None` when
/// `text` does not start with a number that fits in a `u64`.
pub fn number_with_unit(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::number_with_unit;

    #[test]
    fn splits_the_number_from_its_unit() {
        assert_eq!(number_with_unit(" 16 kB "), Some((16, "kB")));
        assert_eq!(number_with_unit("30min"), Some((30, "min")));
        assert_eq!(number_with_unit("0"), Some((0, "")));
        assert_eq!(number_with_unit("kB"), None);
        assert_eq!(number_with_unit("99999999999999999999"), None);
    }
}
