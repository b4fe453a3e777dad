//! The member a replica streams from, and the libpq connection string for it.

use matriarch_model::{MemberName, StandbyCluster};

use crate::secret::{Credentials, Secret};

/// A member to stream WAL from (or to take a base backup or rewind from).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The upstream member's name.
    pub member: MemberName,
    /// Its PostgreSQL host: an IP address, a host name, or (as libpq allows)
    /// a Unix socket directory starting with `/`.
    pub host: String,
    /// Its PostgreSQL port.
    pub port: u16,
    /// Set when this is no member but a standby cluster's source (the
    /// standby leader's upstream, another cluster): no slot is created
    /// there, `primary_slot_name` and the archive settings come from the
    /// section, and without `host`/`port` only the archive is read.
    pub standby_source: Option<Box<StandbyCluster>>,
}

impl Upstream {
    /// The upstream of a standby leader: the source `section` names
    /// (`member` only names it in logs).
    pub fn standby_source(section: &StandbyCluster) -> Self {
        Upstream {
            // A valid name: letters and '-'.
            member: MemberName::new("standby-cluster-source")
                .unwrap_or_else(|_| unreachable!("a valid member name")),
            host: section.host.clone().unwrap_or_default(),
            port: section.port_or_default(),
            standby_source: Some(Box::new(section.clone())),
        }
    }

    /// Renders the libpq connection string for `primary_conninfo`:
    /// `host`, `port`, `user`, `password` (when there is one) and
    /// `application_name` as `key=value` pairs.
    ///
    /// `application_name` is the *local* member's name: the primary shows it
    /// in `pg_stat_replication` and matches it against
    /// `synchronous_standby_names`.
    ///
    /// Values are quoted as libpq requires (single quotes, with `'` and `\`
    /// escaped by a backslash) whenever they hold anything but letters,
    /// digits, `_` and `.`. The result is the connection string itself; a
    /// caller writing it into `postgresql.auto.conf` must still quote it as a
    /// configuration value. It contains the password, hence a [`Secret`].
    pub fn primary_conninfo(
        &self,
        replication: &Credentials,
        application_name: &MemberName,
    ) -> Secret {
        let password = replication
            .password
            .as_ref()
            .map(|password| ("password", password.expose()));
        Secret::new(self.conninfo(&replication.username, password, application_name))
    }

    /// Renders `primary_conninfo` without the password: `host`, `port`,
    /// `user`, `passfile` (when given) and `application_name`.
    ///
    /// PostgreSQL logs `primary_conninfo` whenever a reload changes it and
    /// shows it to superusers, so the password lives in a 0600 passfile
    /// (libpq's `passfile` option, as Patroni's pgpass) instead.
    pub fn primary_conninfo_with_passfile(
        &self,
        user: &str,
        passfile: Option<&std::path::Path>,
        application_name: &MemberName,
    ) -> String {
        let passfile = passfile.map(|passfile| passfile.to_string_lossy());
        let passfile = passfile.as_deref().map(|passfile| ("passfile", passfile));
        self.conninfo(user, passfile, application_name)
    }

    /// `host`, `port`, `user`, then the one credential pair (the password or
    /// the passfile) when there is one, and `application_name`.
    fn conninfo(
        &self,
        user: &str,
        credential: Option<(&str, &str)>,
        application_name: &MemberName,
    ) -> String {
        let mut conninfo = String::new();
        let mut pair = |key: &str, value: &str| {
            if !conninfo.is_empty() {
                conninfo.push(' ');
            }
            conninfo.push_str(key);
            conninfo.push('=');
            push_libpq_value(&mut conninfo, value);
        };
        pair("host", &self.host);
        pair("port", &self.port.to_string());
        pair("user", user);
        if let Some((key, value)) = credential {
            pair(key, value);
        }
        pair("application_name", application_name.as_str());
        conninfo
    }
}

/// Renders a libpq password file (`~/.pgpass` format) that gives `user`'s
/// password for any host, port and database: `:` and `\` are escaped with a
/// backslash as libpq expects. It holds the password, hence a [`Secret`].
pub(crate) fn pgpass_line(user: &str, password: &str) -> Secret {
    fn escape(out: &mut String, value: &str) {
        for c in value.chars() {
            if c == ':' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    let mut line = String::from("*:*:*:");
    escape(&mut line, user);
    line.push(':');
    escape(&mut line, password);
    line.push('\n');
    Secret::new(line)
}

/// Appends one libpq connection-string value, quoted only when needed (as
/// libpq's own `appendConnStrVal` does) so that plain values stay readable.
pub(crate) fn push_libpq_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if plain {
        out.push_str(value);
        return;
    }
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libpq_value(value: &str) -> String {
        let mut out = String::new();
        push_libpq_value(&mut out, value);
        out
    }

    fn upstream(host: &str) -> Upstream {
        Upstream {
            member: MemberName::new("pg-1").unwrap(),
            host: host.to_owned(),
            port: 5432,
            standby_source: None,
        }
    }

    #[test]
    fn password_with_quote_backslash_and_spaces_is_escaped() {
        let conninfo = upstream("10.0.0.1").primary_conninfo(
            &Credentials::new("replicator", r"it's a \secret"),
            &MemberName::new("pg-2").unwrap(),
        );
        assert_eq!(
            conninfo.expose(),
            r"host=10.0.0.1 port=5432 user=replicator password='it\'s a \\secret' application_name='pg-2'"
        );
    }

    #[test]
    fn conninfo_without_password_omits_the_key() {
        let conninfo = upstream("db.example.com").primary_conninfo(
            &Credentials::without_password("replicator"),
            &MemberName::new("pg_2").unwrap(),
        );
        assert_eq!(
            conninfo.expose(),
            "host=db.example.com port=5432 user=replicator application_name=pg_2"
        );
    }

    #[test]
    fn libpq_values_are_quoted_when_libpq_would_misread_them() {
        for (value, written) in [
            ("", "''"),
            ("plain_1.2", "plain_1.2"),
            ("a=b", "'a=b'"),
            ("/var/run/postgresql", "'/var/run/postgresql'"),
            ("::1", "'::1'"),
            (r"\'", r"'\\\''"),
        ] {
            assert_eq!(libpq_value(value), written, "{value:?}");
        }
    }

    #[test]
    fn pgpass_escapes_colons_and_backslashes() {
        assert_eq!(
            pgpass_line("rep:l", r"a:b\c").expose(),
            "*:*:*:rep\\:l:a\\:b\\\\c\n"
        );
    }

    #[test]
    fn conninfo_with_passfile_has_no_password() {
        let conninfo = upstream("10.0.0.1").primary_conninfo_with_passfile(
            "replicator",
            Some(std::path::Path::new("/var/lib/pg/data.pgpass")),
            &MemberName::new("pg-2").unwrap(),
        );
        assert_eq!(
            conninfo,
            "host=10.0.0.1 port=5432 user=replicator passfile='/var/lib/pg/data.pgpass' application_name='pg-2'"
        );
    }

    #[test]
    fn conninfo_is_a_secret_so_the_password_is_not_logged() {
        let conninfo = upstream("10.0.0.1").primary_conninfo(
            &Credentials::new("replicator", "topsecret"),
            &MemberName::new("pg-2").unwrap(),
        );
        assert!(!format!("{conninfo:?} {conninfo}").contains("topsecret"));
    }
}
