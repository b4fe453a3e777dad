//! Where members are: their connection URLs as PostgreSQL upstreams and
//! router endpoints.

use matriarch_dcs::Dcs;
use matriarch_model::MemberName;
use matriarch_postgres::{Postgres, Upstream};
use matriarch_router::{Endpoint, Router};

use super::state::Engine;

/// `postgres://host:port/...` → (host, port).
pub(super) fn host_port(conn_url: &str) -> Option<(String, u16)> {
    let rest = conn_url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let address = matriarch_model::HostPort::parse_with_default_port(authority, 5432).ok()?;
    Some((address.host, address.port))
}

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// Member `name` as an upstream to replicate from.
    pub(super) fn upstream(&self, name: &MemberName) -> Option<Upstream> {
        let view = self.last_view.as_ref()?;
        let member = view.members.get(name.as_str())?.as_ref().ok()?;
        let (host, port) = host_port(&member.value.conn_url)?;
        Some(Upstream {
            member: name.clone(),
            host,
            port,
            standby_source: None,
        })
    }

    /// Member `name` as a router endpoint.
    pub(super) fn endpoint(&self, name: &MemberName) -> Option<Endpoint> {
        let conn_url = if name == self.name() {
            self.settings.node.conn_url.clone()
        } else {
            let view = self.last_view.as_ref()?;
            view.members
                .get(name.as_str())?
                .as_ref()
                .ok()?
                .value
                .conn_url
                .clone()
        };
        let (host, port) = host_port(&conn_url)?;
        Some(Endpoint {
            member: name.clone(),
            host,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn connection_urls_give_host_and_port() {
        let cases = [
            (
                "postgres://10.0.0.5:5433/postgres",
                Some(("10.0.0.5", 5433)),
            ),
            (
                "postgresql://u:p@db.example:6000/x?sslmode=require",
                Some(("db.example", 6000)),
            ),
            ("postgres://127.0.0.1/postgres", Some(("127.0.0.1", 5432))),
            ("postgres://[::1]:5432/postgres", Some(("::1", 5432))),
            ("not a url", None),
            ("postgres://:5432/", None),
            ("postgres://h:notaport/", None),
        ];
        for (url, expected) in cases {
            let expected = expected.map(|(host, port)| (host.to_owned(), port));
            assert_eq!(host_port(url), expected, "{url}");
        }
    }
}
