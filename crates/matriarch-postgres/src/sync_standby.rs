//! `synchronous_standby_names`: rendering it, and parsing what PostgreSQL reports.

use std::fmt;
use std::str::FromStr;

use crate::error::PostgresError;
use crate::quoting::sql_ident;

/// The standbys a primary waits for at commit, as PostgreSQL's
/// `synchronous_standby_names` expresses it.
///
/// Build values with [`SyncStandbyNames::first`] and [`SyncStandbyNames::any`],
/// which reject what PostgreSQL would reject; values built directly should go
/// through [`SyncStandbyNames::validate`] before use.
///
/// `Display` renders PostgreSQL's syntax (`FIRST 1 ("a","b")`,
/// `ANY 2 ("a","b","c")`, and the empty string for [`SyncStandbyNames::Off`]);
/// `FromStr` parses every form PostgreSQL accepts, including the older ones
/// (`a, b` and `2 (a, b)`, which mean `FIRST`), so that
/// `text.parse()` of the rendering gives the value back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SyncStandbyNames {
    /// Asynchronous replication (an empty setting).
    Off,
    /// Wait for the first `count` connected standbys in `names`' order of priority.
    First {
        /// How many standbys must confirm each commit (at least 1).
        count: u32,
        /// Standby `application_name`s by priority; `*` matches any standby.
        names: Vec<String>,
    },
    /// Wait for any `count` standbys in `names` (quorum commit).
    Any {
        /// How many standbys must confirm each commit (at least 1).
        count: u32,
        /// Standby `application_name`s; `*` matches any standby.
        names: Vec<String>,
    },
}

/// The standby names as owned strings.
fn owned(names: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    names.into_iter().map(Into::into).collect()
}

impl SyncStandbyNames {
    /// Priority-based synchronous replication: `FIRST count (names)`.
    pub fn first<I, S>(count: u32, names: I) -> Result<Self, PostgresError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = owned(names);
        Self::validated(Self::First { count, names })
    }

    /// Quorum-based synchronous replication: `ANY count (names)`.
    pub fn any<I, S>(count: u32, names: I) -> Result<Self, PostgresError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = owned(names);
        Self::validated(Self::Any { count, names })
    }

    /// `self`, once [`SyncStandbyNames::validate`] accepts it.
    fn validated(self) -> Result<Self, PostgresError> {
        self.validate()?;
        Ok(self)
    }

    /// Checks what PostgreSQL would check: a count of at least 1, at least
    /// one name, and no empty name (which no standby could ever match).
    pub fn validate(&self) -> Result<(), PostgresError> {
        let invalid = |reason: String| PostgresError::InvalidSyncStandbyNames {
            input: self.to_string(),
            reason,
        };
        match self {
            SyncStandbyNames::Off => Ok(()),
            SyncStandbyNames::First { count, names } | SyncStandbyNames::Any { count, names } => {
                if *count == 0 {
                    return Err(invalid(ZERO_COUNT.to_owned()));
                }
                if names.is_empty() {
                    return Err(invalid(EMPTY_LIST.to_owned()));
                }
                if names.iter().any(String::is_empty) {
                    return Err(invalid("a standby name is empty".to_owned()));
                }
                Ok(())
            }
        }
    }

    /// The standby names (none when [`SyncStandbyNames::Off`]).
    pub fn names(&self) -> &[String] {
        match self {
            SyncStandbyNames::Off => &[],
            SyncStandbyNames::First { names, .. } | SyncStandbyNames::Any { names, .. } => names,
        }
    }

    /// How many standbys must confirm each commit (0 when [`SyncStandbyNames::Off`]).
    pub fn count(&self) -> u32 {
        match self {
            SyncStandbyNames::Off => 0,
            SyncStandbyNames::First { count, .. } | SyncStandbyNames::Any { count, .. } => *count,
        }
    }
}

const ZERO_COUNT: &str = "the number of synchronous standbys must be at least 1, not 0";
const EMPTY_LIST: &str = "the standby list is empty";

impl fmt::Display for SyncStandbyNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (keyword, count, names) = match self {
            SyncStandbyNames::Off => return Ok(()),
            SyncStandbyNames::First { count, names } => ("FIRST", count, names),
            SyncStandbyNames::Any { count, names } => ("ANY", count, names),
        };
        write!(f, "{keyword} {count} (")?;
        for (index, name) in names.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            // `*` is left bare for readability; PostgreSQL compares names as
            // strings, so `"*"` would mean the same.
            if name == "*" {
                f.write_str("*")?;
            } else {
                f.write_str(&sql_ident(name))?;
            }
        }
        f.write_str(")")
    }
}

impl FromStr for SyncStandbyNames {
    type Err = PostgresError;

    /// Parses `synchronous_standby_names` with PostgreSQL's grammar
    /// (`syncrep_gram.y`): an empty (or blank) value is [`SyncStandbyNames::Off`];
    /// `FIRST`/`ANY` are case-insensitive; unquoted names are kept as
    /// written; `"..."` names may hold anything, with `""` for a `"`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| PostgresError::InvalidSyncStandbyNames {
            input: input.to_owned(),
            reason,
        };
        let tokens = tokenize(input).map_err(invalid)?;
        Parser {
            tokens: &tokens,
            next: 0,
        }
        .parse()
        .map_err(invalid)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum TokenKind {
    /// An unquoted or quoted name, or `*`.
    Name(String),
    /// Digits: a count, or (where a name is expected) a name.
    Number(String),
    Any,
    First,
    Comma,
    Open,
    Close,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Name(name) => write!(f, "name {name:?}"),
            TokenKind::Number(digits) => write!(f, "number {digits}"),
            TokenKind::Any => f.write_str("ANY"),
            TokenKind::First => f.write_str("FIRST"),
            TokenKind::Comma => f.write_str("','"),
            TokenKind::Open => f.write_str("'('"),
            TokenKind::Close => f.write_str("')'"),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: TokenKind,
    /// 1-based character position, for error messages.
    position: usize,
}

/// Splits the input as PostgreSQL's `syncrep_scanner.l` does.
fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    // The scanner's identifier classes: non-ASCII characters are allowed
    // (PostgreSQL allows bytes \200-\377), `$` only after the first character.
    let starts_identifier = |c: char| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii();
    let continues_identifier = |c: char| starts_identifier(c) || c.is_ascii_digit() || c == '$';

    let mut tokens = Vec::new();
    let mut chars = input
        .chars()
        .enumerate()
        .map(|(index, c)| (index + 1, c))
        .peekable();
    while let Some((position, c)) = chars.next() {
        let kind = match c {
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' => continue,
            ',' => TokenKind::Comma,
            '(' => TokenKind::Open,
            ')' => TokenKind::Close,
            '*' => TokenKind::Name("*".to_owned()),
            '"' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(format!(
                            "the quoted name starting at character {position} has no closing '\"'"
                        ))
                        }
                        Some((_, '"')) => {
                            if chars.next_if(|&(_, c)| c == '"').is_some() {
                                name.push('"');
                            } else {
                                break;
                            }
                        }
                        Some((_, c)) => name.push(c),
                    }
                }
                if name.is_empty() {
                    return Err(format!("the quoted name at character {position} is empty"));
                }
                TokenKind::Name(name)
            }
            c if c.is_ascii_digit() => {
                let mut digits = String::from(c);
                while let Some((_, digit)) = chars.next_if(|&(_, c)| c.is_ascii_digit()) {
                    digits.push(digit);
                }
                TokenKind::Number(digits)
            }
            c if starts_identifier(c) => {
                let mut word = String::from(c);
                while let Some((_, c)) = chars.next_if(|&(_, c)| continues_identifier(c)) {
                    word.push(c);
                }
                if word.eq_ignore_ascii_case("any") {
                    TokenKind::Any
                } else if word.eq_ignore_ascii_case("first") {
                    TokenKind::First
                } else {
                    TokenKind::Name(word)
                }
            }
            other => {
                return Err(format!(
                    "unexpected character {other:?} at character {position}"
                ))
            }
        };
        tokens.push(Token { kind, position });
    }
    Ok(tokens)
}

fn keyword_as_name(keyword: &TokenKind, position: usize) -> String {
    format!("{keyword} at character {position} is a keyword; quote it (\"{keyword}\") to use it as a standby name")
}

struct Parser<'a> {
    tokens: &'a [Token],
    next: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn advance(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.next);
        self.next += 1;
        token
    }

    fn parse(mut self) -> Result<SyncStandbyNames, String> {
        let Some(first) = self.peek().cloned() else {
            return Ok(SyncStandbyNames::Off);
        };
        let next_is_open = matches!(
            self.tokens.get(self.next + 1),
            Some(Token {
                kind: TokenKind::Open,
                ..
            })
        );
        let value = match first.kind {
            TokenKind::Any | TokenKind::First => {
                self.advance();
                if let Some(Token {
                    kind: TokenKind::Comma,
                    ..
                }) = self.peek()
                {
                    // `any, b`: most likely a standby that is named like the keyword.
                    return Err(keyword_as_name(&first.kind, first.position));
                }
                let count = self.count(&first.kind.to_string())?;
                let names = self.parenthesized_list()?;
                if first.kind == TokenKind::Any {
                    SyncStandbyNames::Any { count, names }
                } else {
                    SyncStandbyNames::First { count, names }
                }
            }
            // `2 (a, b)`: the pre-9.6 form, which means FIRST 2.
            TokenKind::Number(_) if next_is_open => {
                let count = self.count("the start")?;
                let names = self.parenthesized_list()?;
                SyncStandbyNames::First { count, names }
            }
            // `a, b`: the pre-9.6 form, which means FIRST 1.
            _ => {
                let names = self.list()?;
                if let Some(extra) = self.peek() {
                    return Err(match extra.kind {
                        TokenKind::Close => format!(
                            "the ')' at character {} has no matching '('",
                            extra.position
                        ),
                        TokenKind::Name(_) | TokenKind::Number(_) => format!(
                            "expected ',' between standby names, found {} at character {}",
                            extra.kind, extra.position
                        ),
                        _ => format!("unexpected {} at character {}", extra.kind, extra.position),
                    });
                }
                SyncStandbyNames::First { count: 1, names }
            }
        };
        if let Some(extra) = self.peek() {
            return Err(format!(
                "unexpected {} at character {} after the closing ')'",
                extra.kind, extra.position
            ));
        }
        Ok(value)
    }

    /// The number of standbys, after `after` (a keyword, or the start).
    fn count(&mut self, after: &str) -> Result<u32, String> {
        match self.advance().cloned() {
            Some(Token { kind: TokenKind::Number(digits), position }) => match digits.parse::<u32>() {
                Ok(0) => Err(ZERO_COUNT.to_owned()),
                Ok(count) => Ok(count),
                Err(_) => Err(format!(
                    "the number of synchronous standbys {digits} at character {position} is too large"
                )),
            },
            Some(other) => Err(format!(
                "expected the number of synchronous standbys after {after}, found {} at character {}",
                other.kind, other.position
            )),
            None => Err(format!("expected the number of synchronous standbys after {after}")),
        }
    }

    /// `( name [, name ...] )`.
    fn parenthesized_list(&mut self) -> Result<Vec<String>, String> {
        let open = match self.advance().cloned() {
            Some(Token {
                kind: TokenKind::Open,
                position,
            }) => position,
            Some(other) => {
                return Err(format!(
                    "expected '(' before the standby list, found {} at character {}",
                    other.kind, other.position
                ))
            }
            None => return Err("expected '(' and a standby list after the number".to_owned()),
        };
        if let Some(Token {
            kind: TokenKind::Close,
            ..
        }) = self.peek()
        {
            return Err(EMPTY_LIST.to_owned());
        }
        let names = self.list()?;
        match self.advance() {
            Some(Token {
                kind: TokenKind::Close,
                ..
            }) => Ok(names),
            Some(other) => Err(format!(
                "expected ',' or ')' after a standby name, found {} at character {}",
                other.kind, other.position
            )),
            None => Err(format!("the '(' at character {open} is never closed")),
        }
    }

    /// `name [, name ...]`, where digits are names too.
    fn list(&mut self) -> Result<Vec<String>, String> {
        let mut names = vec![self.name(None)?];
        while let Some(Token {
            kind: TokenKind::Comma,
            position,
        }) = self.peek().cloned()
        {
            self.advance();
            names.push(self.name(Some(position))?);
        }
        Ok(names)
    }

    fn name(&mut self, after_comma_at: Option<usize>) -> Result<String, String> {
        match self.advance().cloned() {
            Some(Token {
                kind: TokenKind::Name(name) | TokenKind::Number(name),
                ..
            }) => Ok(name),
            Some(Token {
                kind: kind @ (TokenKind::Any | TokenKind::First),
                position,
            }) => Err(keyword_as_name(&kind, position)),
            Some(other) => Err(format!(
                "expected a standby name, found {} at character {}",
                other.kind, other.position
            )),
            None => Err(match after_comma_at {
                Some(comma) => {
                    format!("expected a standby name after the ',' at character {comma}")
                }
                None => EMPTY_LIST.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SyncStandbyNames {
        text.parse()
            .unwrap_or_else(|err| panic!("{text:?} should parse: {err}"))
    }

    fn first(count: u32, names: &[&str]) -> SyncStandbyNames {
        SyncStandbyNames::first(count, names.iter().copied()).unwrap()
    }

    fn any(count: u32, names: &[&str]) -> SyncStandbyNames {
        SyncStandbyNames::any(count, names.iter().copied()).unwrap()
    }

    #[test]
    fn renders_postgresql_syntax() {
        assert_eq!(SyncStandbyNames::Off.to_string(), "");
        assert_eq!(first(1, &["a", "b"]).to_string(), r#"FIRST 1 ("a","b")"#);
        assert_eq!(
            any(2, &["a", "b", "c"]).to_string(),
            r#"ANY 2 ("a","b","c")"#
        );
        assert_eq!(first(1, &["*"]).to_string(), "FIRST 1 (*)");
        assert_eq!(
            first(1, &[r#"say "hi""#]).to_string(),
            r#"FIRST 1 ("say ""hi""")"#
        );
    }

    #[test]
    fn parses_the_examples_from_the_postgresql_documentation() {
        assert_eq!(parse("FIRST 2 (s1, s2, s3)"), first(2, &["s1", "s2", "s3"]));
        assert_eq!(parse("ANY 2 (s1, s2, s3)"), any(2, &["s1", "s2", "s3"]));
        assert_eq!(parse("s1, s2"), first(1, &["s1", "s2"]));
        assert_eq!(parse("2 (s1, s2, s3)"), first(2, &["s1", "s2", "s3"]));
        assert_eq!(parse("*"), first(1, &["*"]));
        assert_eq!(parse("ANY 1 (*)"), any(1, &["*"]));
        assert_eq!(parse(""), SyncStandbyNames::Off);
        assert_eq!(parse("  \t"), SyncStandbyNames::Off);
    }

    #[test]
    fn keywords_are_case_insensitive_and_names_keep_their_case() {
        assert_eq!(parse("first 1 (Node_A)"), first(1, &["Node_A"]));
        assert_eq!(parse("aNy 3(a,b,c)"), any(3, &["a", "b", "c"]));
        assert_eq!(parse("\nFiRsT\t2\n(\"x\" ,y)\n"), first(2, &["x", "y"]));
    }

    #[test]
    fn quoted_names_may_hold_anything() {
        assert_eq!(
            parse(r#"FIRST 1 ("Quoted, name", "with ""quotes""", "ANY", "pg-2")"#),
            first(1, &["Quoted, name", r#"with "quotes""#, "ANY", "pg-2"])
        );
        // Digits where a name is expected are a name, as in PostgreSQL.
        assert_eq!(parse("1, 2"), first(1, &["1", "2"]));
        assert_eq!(parse("ANY 1 (10)"), any(1, &["10"]));
        assert_eq!(parse("nöde$1"), first(1, &["nöde$1"]));
    }

    #[test]
    fn rendering_parses_back_to_the_same_value() {
        for value in [
            SyncStandbyNames::Off,
            first(1, &["a"]),
            first(2, &["pg-1", "pg.2", "PG_3"]),
            any(2, &["a", "b", "c"]),
            any(1, &["*"]),
            first(
                1,
                &[
                    "any", "first", "FIRST", "1", "a b", "(", ")", ",", "\"", "ünï",
                ],
            ),
        ] {
            let rendered = value.to_string();
            assert_eq!(parse(&rendered), value, "{rendered}");
        }
    }

    #[track_caller]
    fn assert_rejected(text: &str, expected_reason: &str) {
        match text.parse::<SyncStandbyNames>() {
            Err(PostgresError::InvalidSyncStandbyNames { input, reason }) => {
                assert_eq!(input, text);
                assert!(
                    reason.contains(expected_reason),
                    "{text:?}: reason {reason:?} should mention {expected_reason:?}"
                );
            }
            other => panic!("{text:?} should be rejected, got {other:?}"),
        }
    }

    #[test]
    fn unbalanced_parentheses_and_quotes_are_rejected() {
        assert_rejected("FIRST 1 (a, b", "the '(' at character 9 is never closed");
        assert_rejected(
            "ANY 2 a, b)",
            "expected '(' before the standby list, found name \"a\"",
        );
        assert_rejected("a, b)", "the ')' at character 5 has no matching '('");
        assert_rejected(
            "FIRST 1 (a))",
            "unexpected ')' at character 12 after the closing ')'",
        );
        assert_rejected("FIRST 1 ((a))", "expected a standby name, found '('");
        assert_rejected(
            r#"FIRST 1 ("a, b)"#,
            "the quoted name starting at character 10 has no closing '\"'",
        );
        assert_rejected(r#"a, "b"#, "no closing '\"'");
        assert_rejected(
            r#"FIRST 1 ("a" "b")"#,
            "expected ',' or ')' after a standby name, found name \"b\"",
        );
    }

    #[test]
    fn counts_must_be_positive_numbers() {
        assert_rejected("FIRST 0 (a)", ZERO_COUNT);
        assert_rejected("ANY 0 (a, b)", ZERO_COUNT);
        assert_rejected("0 (a)", ZERO_COUNT);
        assert_rejected(
            "ANY two (a, b)",
            "expected the number of synchronous standbys after ANY, found name \"two\"",
        );
        assert_rejected("FIRST (a, b)", "after FIRST, found '('");
        assert_rejected("ANY -1 (a)", "unexpected character '-' at character 5");
        assert_rejected("FIRST 1.5 (a)", "unexpected character '.'");
        assert_rejected(
            "ANY 99999999999 (a)",
            "99999999999 at character 5 is too large",
        );
        assert_rejected(
            "FIRST",
            "expected the number of synchronous standbys after FIRST",
        );
        assert_rejected("ANY 2", "expected '(' and a standby list after the number");
    }

    #[test]
    fn empty_lists_and_missing_names_are_rejected() {
        assert_rejected("FIRST 1 ()", EMPTY_LIST);
        assert_rejected("ANY 1 ( )", EMPTY_LIST);
        assert_rejected("a,", "expected a standby name after the ',' at character 2");
        assert_rejected("a,,b", "expected a standby name, found ','");
        assert_rejected(", a", "expected a standby name, found ','");
        assert_rejected("FIRST 1 (a,)", "expected a standby name, found ')'");
        assert_rejected(
            r#"FIRST 1 ("")"#,
            "the quoted name at character 10 is empty",
        );
        assert_rejected(
            "a b",
            "expected ',' between standby names, found name \"b\" at character 3",
        );
        assert_rejected("a; b", "unexpected character ';' at character 2");
    }

    #[test]
    fn unquoted_keywords_are_not_names() {
        assert_rejected(
            "any, b",
            "ANY at character 1 is a keyword; quote it (\"ANY\")",
        );
        assert_rejected("FIRST 1 (a, first)", "FIRST at character 13 is a keyword");
    }

    #[test]
    fn constructors_reject_what_postgresql_would_reject() {
        for (result, reason) in [
            (SyncStandbyNames::first(0, ["a"]), ZERO_COUNT),
            (SyncStandbyNames::any(1, Vec::<String>::new()), EMPTY_LIST),
            (
                SyncStandbyNames::first(1, ["a", ""]),
                "a standby name is empty",
            ),
        ] {
            match result {
                Err(PostgresError::InvalidSyncStandbyNames { reason: got, .. }) => {
                    assert_eq!(got, reason)
                }
                other => panic!("expected rejection with {reason:?}, got {other:?}"),
            }
        }
        // More standbys than names is allowed, as PostgreSQL allows it
        // (`*` can match any number of standbys).
        assert_eq!(first(3, &["*"]).count(), 3);
        assert!(any(2, &["a", "b"]).validate().is_ok());
    }
}
