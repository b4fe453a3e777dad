//! `host:port` and `[IPv6]:port` addresses, parsed one way everywhere.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// A host (a name or an IP address, IPv6 without its brackets) and a port.
///
/// `Display` writes it back as `host:port`, with an IPv6 address in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host name or address; an IPv6 address without brackets.
    pub host: String,
    /// The port, never 0.
    pub port: u16,
}

/// Text that is not a usable `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not host:port: {problem}")]
pub struct HostPortError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub problem: HostPortProblem,
}

/// What is wrong with a `host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostPortProblem {
    /// No `:port` where one is required.
    #[error("the port is missing")]
    MissingPort,
    /// Nothing before the `:port`.
    #[error("the host is empty")]
    EmptyHost,
    /// White space, control characters or stray brackets in the host.
    #[error("the host has white space, control characters or brackets")]
    BadHostCharacters,
    /// An IPv6 address written without brackets: its own colons make the
    /// port ambiguous.
    #[error("an IPv6 address needs brackets, as in [::1]:5432")]
    UnbracketedIpv6,
    /// `[...]` that is not closed or does not hold an IPv6 address.
    #[error("the text in brackets is not an IPv6 address")]
    BadIpv6,
    /// Something other than `:port` after the closing bracket.
    #[error("only :port may follow the closing bracket")]
    TextAfterBracket,
    /// A port that is not a number from 0 to 65535.
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    /// Port 0, which nobody can connect to.
    #[error("the port must not be 0")]
    ZeroPort,
}

impl HostPort {
    /// Parses `host:port` or `[v6]:port`; the port is required.
    pub fn parse(text: &str) -> Result<Self, HostPortError> {
        Self::parse_inner(text, None)
    }

    /// Parses `host:port`, `[v6]:port`, `host` or `[v6]`; `default_port`
    /// stands in for a missing port.
    pub fn parse_with_default_port(text: &str, default_port: u16) -> Result<Self, HostPortError> {
        Self::parse_inner(text, Some(default_port))
    }

    fn parse_inner(text: &str, default_port: Option<u16>) -> Result<Self, HostPortError> {
        let error = |problem| HostPortError {
            input: text.to_owned(),
            problem,
        };
        let (host, port) = split(text).map_err(error)?;
        if host.is_empty() {
            return Err(error(HostPortProblem::EmptyHost));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '[' || c == ']')
        {
            return Err(error(HostPortProblem::BadHostCharacters));
        }
        let port = match (port, default_port) {
            (Some(port), _) => parse_port(port).map_err(error)?,
            (None, Some(port)) if port != 0 => port,
            (None, Some(_)) => return Err(error(HostPortProblem::ZeroPort)),
            (None, None) => return Err(error(HostPortProblem::MissingPort)),
        };
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

/// Splits off the port (`None` when there is none) and the brackets of an
/// IPv6 host.
fn split(text: &str) -> Result<(&str, Option<&str>), HostPortProblem> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(HostPortProblem::BadIpv6)?;
        // A zone (`fe80::1%eth0`) is allowed after the address.
        let address = host
            .split_once('%')
            .map_or(host, |(address, _zone)| address);
        if address.parse::<Ipv6Addr>().is_err() {
            return Err(HostPortProblem::BadIpv6);
        }
        return match after {
            "" => Ok((host, None)),
            after => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(HostPortProblem::TextAfterBracket),
            },
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(HostPortProblem::UnbracketedIpv6),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((text, None)),
    }
}

fn parse_port(port: &str) -> Result<u16, HostPortProblem> {
    if port.is_empty() {
        return Err(HostPortProblem::MissingPort);
    }
    // `u16::from_str` takes a leading `+`; a port is digits only.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostPortProblem::BadPort);
    }
    match port.parse::<u16>() {
        Ok(0) => Err(HostPortProblem::ZeroPort),
        Ok(port) => Ok(port),
        Err(_) => Err(HostPortProblem::BadPort),
    }
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        HostPort::parse(text)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (String, u16) {
        let parsed = HostPort::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (parsed.host, parsed.port)
    }

    fn problem(text: &str) -> HostPortProblem {
        HostPort::parse(text).expect_err(text).problem
    }

    #[test]
    fn names_ipv4_and_bracketed_ipv6_with_a_port_parse() {
        assert_eq!(ok("db1.example:5432"), ("db1.example".to_owned(), 5432));
        assert_eq!(ok("127.0.0.1:2379"), ("127.0.0.1".to_owned(), 2379));
        assert_eq!(ok("[::1]:5432"), ("::1".to_owned(), 5432));
        assert_eq!(ok("[fe80::1%eth0]:80"), ("fe80::1%eth0".to_owned(), 80));
        assert_eq!(ok("h:65535").1, 65535);
    }

    #[test]
    fn display_writes_back_what_was_parsed() {
        for text in [
            "db1:5432",
            "10.0.0.1:8008",
            "[::1]:5432",
            "[2001:db8::7]:2181",
        ] {
            assert_eq!(HostPort::parse(text).expect(text).to_string(), text);
        }
    }

    #[test]
    fn a_required_port_that_is_missing_is_refused() {
        assert_eq!(problem("db1"), HostPortProblem::MissingPort);
        assert_eq!(problem("db1:"), HostPortProblem::MissingPort);
        assert_eq!(problem("[::1]"), HostPortProblem::MissingPort);
        // Without brackets the last group of an IPv6 address would be taken
        // for a port.
        assert_eq!(problem("::1"), HostPortProblem::UnbracketedIpv6);
        assert_eq!(problem("fe80::1:5432"), HostPortProblem::UnbracketedIpv6);
    }

    #[test]
    fn empty_hosts_and_bad_or_zero_ports_are_refused() {
        use HostPortProblem::*;
        for (text, expected) in [
            (":5432", EmptyHost),
            ("", EmptyHost),
            ("[]:5432", BadIpv6),
            ("db1:0", ZeroPort),
            ("[::1]:0", ZeroPort),
            ("db1:x", BadPort),
            ("db1:65536", BadPort),
            ("db1:+80", BadPort),
            ("db1:-1", BadPort),
            ("db1:54 32", BadPort),
            ("db 1:5432", BadHostCharacters),
            ("[::1:5432", BadIpv6),
            ("[db1]:5432", BadIpv6),
            ("[::1]5432", TextAfterBracket),
        ] {
            assert_eq!(problem(text), expected, "{text:?}");
        }
    }

    #[test]
    fn the_error_names_the_text_and_the_problem() {
        let err = HostPort::parse("db1:0").unwrap_err().to_string();
        assert_eq!(err, "\"db1:0\" is not host:port: the port must not be 0");
    }

    #[test]
    fn a_default_port_fills_in_only_when_the_port_is_absent() {
        let parse = |text| HostPort::parse_with_default_port(text, 5432);
        assert_eq!(parse("db1").expect("name").port, 5432);
        assert_eq!(parse("[::1]").expect("v6").host, "::1");
        assert_eq!(parse("db1:6000").expect("explicit").port, 6000);
        assert_eq!(
            parse("::1").unwrap_err().problem,
            HostPortProblem::UnbracketedIpv6
        );
        assert_eq!(
            parse("db1:").unwrap_err().problem,
            HostPortProblem::MissingPort
        );
    }
}
