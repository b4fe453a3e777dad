//! Quoting values for PostgreSQL's configuration files and for SQL, shared
//! by the files the controller writes, the statements it runs and the
//! `synchronous_standby_names` value.

/// Quotes a configuration file value: `'...'` with `'` doubled and `\` escaped.
pub(crate) fn conf_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an SQL string literal (`standard_conforming_strings` is on).
pub(crate) fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Quotes an SQL identifier.
pub(crate) fn sql_ident(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_the_configuration_file_and_sql() {
        assert_eq!(conf_quote(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
    }
}
