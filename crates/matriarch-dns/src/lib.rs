//! The DNS router backend: RFC 2136 dynamic updates signed with TSIG
//! (RFC 8945) move a writer name (and optionally a reader name) to the
//! cluster's members.
//!
//! [`DnsRouter`] speaks DNS over TCP to the zone's primary server (BIND,
//! Knot, PowerDNS, ...). Every change is one UPDATE message, applied
//! atomically by the server: it deletes the name's old A/AAAA/CNAME records
//! and adds the new ones. Its prerequisites say that the name still holds
//! exactly what the router read just before, so a stale node cannot
//! overwrite a newer change (the server answers YXRRSET/NXRRSET and
//! [`DnsRouter`] reports [`RouterError::Rejected`]). A name that already
//! holds the wanted records is left alone: `route` then costs one read per
//! managed name and no update.
//!
//! The read is an `ANY` query over TCP, which authoritative servers answer
//! with every RRset of the name. A server that answers `ANY` minimally
//! (RFC 8482) makes the read look empty; the prerequisites then fail and
//! the update is refused as stale, so the outcome is an error, never a
//! wrong record.
//!
//! The prerequisites guard the window between the read and the write. They
//! do not stop a node that wrongly believes it holds the leader lock from
//! reading afresh and writing: that is the fencing rule's job (see
//! [`Router`]).
//!
//! Records for an endpoint:
//!
//! - an IPv4 host gives an `A` record, an IPv6 host an `AAAA` record;
//! - a host name gives a `CNAME` (writer name only: a reader name holds an
//!   address set, so replicas given by host name are left out of it, with
//!   a warning).

#![warn(missing_docs)]

mod base64;
mod config;
mod names;
mod records;
mod tsig;
mod wire;

pub use config::DnsRouterConfig;
pub use records::{DnsState, NameRecords};
pub use tsig::TsigKey;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use matriarch_router::{Endpoint, Router, RouterError, Routes};
use names::fqdn;
use tracing::{debug, info, warn};

/// A [`Router`] that points DNS names at the cluster's members with
/// TSIG-signed RFC 2136 updates. See the crate documentation.
pub struct DnsRouter {
    name: String,
    server: SocketAddr,
    zone: Name,
    writer: Name,
    reader: Option<Name>,
    ttl: u32,
    key_name: String,
    signer: TSigner,
    timeout: Duration,
}

impl fmt::Debug for DnsRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsRouter")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("zone", &self.zone.to_ascii())
            .field("writer", &self.writer.to_ascii())
            .field("reader", &self.reader.as_ref().map(Name::to_ascii))
            .field("ttl", &self.ttl)
            .field("key_name", &self.key_name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An endpoint's host as an address, if it is one (`[::1]` included).
fn host_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DnsRouter {
    /// A router for `config`; checks the names, the key and the algorithm
    /// (no network traffic).
    pub fn new(config: DnsRouterConfig) -> Result<Self, RouterError> {
        let zone = fqdn("zone", &config.zone)?;
        let writer = fqdn("writer name", &config.writer_name)?;
        if !zone.zone_of(&writer) {
            return Err(RouterError::Config {
                message: format!(
                    "writer name `{}` is not inside zone `{}`",
                    config.writer_name, config.zone
                ),
            });
        }
        let reader = match &config.reader_name {
            None => None,
            Some(text) => {
                let reader = fqdn("reader name", text)?;
                if !zone.zone_of(&reader) {
                    return Err(RouterError::Config {
                        message: format!(
                            "reader name `{text}` is not inside zone `{}`",
                            config.zone
                        ),
                    });
                }
                if reader == writer {
                    return Err(RouterError::Config {
                        message: format!("reader name `{text}` must differ from the writer name"),
                    });
                }
                Some(reader)
            }
        };
        let signer = config.key.signer()?;
        if config.timeout.is_zero() {
            return Err(RouterError::Config {
                message: "the DNS router's timeout must be positive".to_owned(),
            });
        }
        Ok(DnsRouter {
            name: format!("dns:{}", writer.to_ascii().trim_end_matches('.')),
            server: config.server,
            zone,
            writer,
            reader,
            ttl: config.ttl,
            key_name: config.key.name().to_owned(),
            signer,
            timeout: config.timeout,
        })
    }

    fn unreachable(&self, message: impl Into<String>) -> RouterError {
        RouterError::Unreachable {
            router: self.name.clone(),
            message: message.into(),
        }
    }

    fn rejected(&self, message: impl Into<String>) -> RouterError {
        RouterError::Rejected {
            router: self.name.clone(),
            message: message.into(),
        }
    }

    /// Runs `work` on a fresh TCP connection to the server, bounded by the
    /// configured timeout.
    async fn with_connection<T, F>(&self, what: &str, work: F) -> Result<T, RouterError>
    where
        F: for<'c> AsyncFnOnce(&'c mut wire::Connection) -> Result<T, RouterError>,
    {
        let run = async {
            let mut connection = wire::Connection::connect(self.server)
                .await
                .map_err(|e| self.unreachable(format!("connecting to {}: {e}", self.server)))?;
            work(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(self.unreachable(format!(
                "{what}: no answer from {} within {:?}",
                self.server, self.timeout
            ))),
        }
    }

    /// Reads what the managed names hold now (one ANY query per managed
    /// name, on one connection).
    pub async fn read(&self) -> Result<DnsState, RouterError> {
        self.with_connection("reading the records", async |connection| {
            self.read_on(connection).await
        })
        .await
    }

    async fn read_on(&self, connection: &mut wire::Connection) -> Result<DnsState, RouterError> {
        let writer = self.query_name(connection, &self.writer).await?;
        let reader = match &self.reader {
            Some(reader) => self.query_name(connection, reader).await?,
            None => NameRecords::default(),
        };
        Ok(DnsState { writer, reader })
    }

    async fn query_name(
        &self,
        connection: &mut wire::Connection,
        name: &Name,
    ) -> Result<NameRecords, RouterError> {
        let mut query = Message::query();
        query.metadata.recursion_desired = false;
        query.add_query(Query::query(name.clone(), RecordType::ANY));
        let bytes = query
            .to_vec()
            .map_err(|e| self.rejected(format!("encoding the query for {name}: {e}")))?;
        let (response, _) = self.exchange(connection, query.metadata.id, &bytes).await?;
        match response.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            ResponseCode::ServFail => {
                return Err(
                    self.unreachable(format!("query for {name}: the server failed (SERVFAIL)"))
                )
            }
            code => {
                return Err(self.rejected(format!(
                    "query for {name}: the server answered {}",
                    code.to_str()
                )))
            }
        }
        let mut records = NameRecords::default();
        for record in response.answers.iter().filter(|r| &r.name == name) {
            match &record.data {
                RData::A(A(ip)) => {
                    records.a.insert(*ip);
                }
                RData::AAAA(AAAA(ip)) => {
                    records.aaaa.insert(*ip);
                }
                RData::CNAME(CNAME(target)) => {
                    records.cname = Some(target.to_ascii());
                }
                _ => continue,
            }
            records.ttls.insert(record.ttl);
        }
        debug!(router = %self.name, name = %name, records = ?records, "read");
        Ok(records)
    }

    /// Sends one message and returns the answer with the same id (and the
    /// raw bytes, for TSIG verification).
    async fn exchange(
        &self,
        connection: &mut wire::Connection,
        id: u16,
        bytes: &[u8],
    ) -> Result<(Message, Vec<u8>), RouterError> {
        connection
            .send(bytes)
            .await
            .map_err(|e| self.unreachable(format!("sending to {}: {e}", self.server)))?;
        loop {
            let raw = connection
                .receive()
                .await
                .map_err(|e| self.unreachable(format!("reading from {}: {e}", self.server)))?;
            let message = Message::from_vec(&raw).map_err(|e| {
                self.unreachable(format!("undecodable answer from {}: {e}", self.server))
            })?;
            if message.metadata.id == id && message.metadata.message_type == MessageType::Response {
                return Ok((message, raw));
            }
            debug!(router = %self.name, id = message.metadata.id, "ignoring an answer to another message");
        }
    }

    /// The records `name` should hold for `endpoints` (the writer gets a
    /// CNAME for a host name; the reader skips host names).
    fn wanted(&self, endpoints: &[&Endpoint], allow_cname: bool) -> NameRecords {
        let mut records = NameRecords::default();
        for endpoint in endpoints {
            match host_ip(&endpoint.host) {
                Some(IpAddr::V4(ip)) => {
                    records.a.insert(ip);
                }
                Some(IpAddr::V6(ip)) => {
                    records.aaaa.insert(ip);
                }
                None if allow_cname => {
                    records.cname = Some(format!("{}.", endpoint.host.trim_end_matches('.')));
                }
                None => warn!(
                    router = %self.name,
                    member = %endpoint.member,
                    host = %endpoint.host,
                    "a reader name holds addresses only; leaving out a replica given by host name"
                ),
            }
        }
        if !records.is_empty() {
            records.ttls.insert(self.ttl);
        }
        records
    }

    /// Sends writers to `routes.primary` and readers to `routes.replicas`
    /// given that the names held `expected` (as returned by
    /// [`DnsRouter::read`]): the update's prerequisites are `expected`, so
    /// it is refused as stale if a name changed since. Names that already
    /// hold what they should are not touched; if none needs a change,
    /// nothing is sent.
    pub async fn route_from(
        &self,
        routes: &Routes,
        expected: &DnsState,
    ) -> Result<(), RouterError> {
        let mut changes = Vec::new();
        let writer = self.wanted(&[&routes.primary], true);
        if host_ip(&routes.primary.host).is_none() {
            fqdn("primary host", &routes.primary.host)?;
        }
        if writer != expected.writer {
            changes.push((&self.writer, &expected.writer, writer));
        }
        if let Some(reader_name) = &self.reader {
            let replicas: Vec<&Endpoint> = routes.replicas.iter().collect();
            let reader = self.wanted(&replicas, false);
            if reader != expected.reader {
                changes.push((reader_name, &expected.reader, reader));
            }
        }
        if changes.is_empty() {
            debug!(router = %self.name, primary = %routes.primary.member, "already routed; nothing to change");
            return Ok(());
        }
        let mut update = self.update_message();
        for (name, old, new) in &changes {
            self.add_prerequisites(&mut update, name, old);
            self.add_replace(&mut update, name, new)?;
        }
        self.with_connection("sending the update", async |connection| {
            self.send_update(connection, update).await
        })
        .await?;
        info!(
            router = %self.name,
            primary = %routes.primary.member,
            replicas = routes.replicas.len(),
            names = changes.len(),
            "routed"
        );
        Ok(())
    }

    /// Removes `member`'s record from the writer name given that it held
    /// `expected`; `Ok` without sending anything if the member is not there.
    pub async fn withdraw_from(
        &self,
        member: &Endpoint,
        expected: &NameRecords,
    ) -> Result<(), RouterError> {
        let mut update = self.update_message();
        let present = match host_ip(&member.host) {
            Some(IpAddr::V4(ip)) if expected.a.contains(&ip) => {
                update.add_update(delete_one(&self.writer, RData::A(A(ip))));
                true
            }
            Some(IpAddr::V6(ip)) if expected.aaaa.contains(&ip) => {
                update.add_update(delete_one(&self.writer, RData::AAAA(AAAA(ip))));
                true
            }
            None if expected.cname.as_deref().is_some_and(|target| {
                target
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(member.host.trim_end_matches('.'))
            }) =>
            {
                update.add_update(delete_rrset(&self.writer, RecordType::CNAME));
                true
            }
            _ => false,
        };
        if !present {
            debug!(router = %self.name, member = %member.member, "not a writer; nothing to withdraw");
            return Ok(());
        }
        self.add_prerequisites(&mut update, &self.writer, expected);
        self.with_connection("sending the withdrawal", async |connection| {
            self.send_update(connection, update).await
        })
        .await?;
        info!(router = %self.name, member = %member.member, "withdrawn from the writer name");
        Ok(())
    }

    fn update_message(&self) -> Message {
        let mut update = Message::query();
        update.metadata.op_code = OpCode::Update;
        update.metadata.recursion_desired = false;
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        update.add_zone(zone);
        update
    }

    /// Prerequisites (RFC 2136 2.4) that `name` holds exactly `records`:
    /// each non-empty RRset must equal what was read, each empty one must
    /// not exist.
    fn add_prerequisites(&self, update: &mut Message, name: &Name, records: &NameRecords) {
        let mut exact = |rtype: RecordType, data: Vec<RData>| {
            if data.is_empty() {
                let mut absent = Record::update0(name.clone(), 0, rtype).into_record_of_rdata();
                absent.dns_class = DNSClass::NONE;
                update.add_pre_requisite(absent);
            } else {
                for rdata in data {
                    update.add_pre_requisite(Record::from_rdata(name.clone(), 0, rdata));
                }
            }
        };
        exact(
            RecordType::A,
            records.a.iter().map(|ip| RData::A(A(*ip))).collect(),
        );
        exact(
            RecordType::AAAA,
            records
                .aaaa
                .iter()
                .map(|ip| RData::AAAA(AAAA(*ip)))
                .collect(),
        );
        let cname = records
            .cname
            .as_deref()
            .and_then(|target| fqdn("CNAME target", target).ok())
            .map(|target| RData::CNAME(CNAME(target)));
        exact(RecordType::CNAME, cname.into_iter().collect());
    }

    /// Updates that replace `name`'s A/AAAA/CNAME records by `records`.
    fn add_replace(
        &self,
        update: &mut Message,
        name: &Name,
        records: &NameRecords,
    ) -> Result<(), RouterError> {
        for rtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            update.add_update(delete_rrset(name, rtype));
        }
        for ip in &records.a {
            update.add_update(Record::from_rdata(name.clone(), self.ttl, RData::A(A(*ip))));
        }
        for ip in &records.aaaa {
            update.add_update(Record::from_rdata(
                name.clone(),
                self.ttl,
                RData::AAAA(AAAA(*ip)),
            ));
        }
        if let Some(target) = &records.cname {
            let target = fqdn("CNAME target", target)?;
            update.add_update(Record::from_rdata(
                name.clone(),
                self.ttl,
                RData::CNAME(CNAME(target)),
            ));
        }
        Ok(())
    }

    async fn send_update(
        &self,
        connection: &mut wire::Connection,
        mut update: Message,
    ) -> Result<(), RouterError> {
        let id = update.metadata.id;
        let verifier = update
            .finalize(&self.signer, now_secs())
            .map_err(|e| self.rejected(format!("signing the update: {e}")))?;
        let bytes = update
            .to_vec()
            .map_err(|e| self.rejected(format!("encoding the update: {e}")))?;
        let (response, raw) = self.exchange(connection, id, &bytes).await?;
        let code = response.metadata.response_code;
        let tsig_error = response.signature().and_then(|s| s.data.error);
        match code {
            ResponseCode::NoError => {
                let mut verifier = verifier
                    .ok_or_else(|| self.rejected("the update was not signed (no TSIG verifier)"))?;
                verifier.verify(&raw).map_err(|e| {
                    self.rejected(format!(
                        "the server's answer to the update failed TSIG verification with key \
                         `{}`: {e}",
                        self.key_name
                    ))
                })?;
                Ok(())
            }
            ResponseCode::YXRRSet
            | ResponseCode::NXRRSet
            | ResponseCode::YXDomain
            | ResponseCode::NXDomain => {
                warn!(router = %self.name, rcode = code.to_str(), "update refused: a prerequisite failed");
                Err(self.rejected(format!(
                    "stale update: the record changed since it was read ({})",
                    code.to_str()
                )))
            }
            ResponseCode::NotAuth | ResponseCode::Refused => {
                let detail = match tsig_error {
                    Some(TsigError::BadSig) => "bad signature: wrong secret",
                    Some(TsigError::BadKey) => "unknown key or algorithm",
                    Some(TsigError::BadTime) => "clock skew beyond the fudge",
                    Some(TsigError::BadTrunc) => "truncated signature",
                    Some(TsigError::Unknown(_)) => "unknown TSIG error",
                    None => "the key may not update this zone",
                };
                warn!(router = %self.name, rcode = code.to_str(), detail, key = %self.key_name, "update refused");
                Err(self.rejected(format!(
                    "the server refused TSIG key `{}` for zone `{}` ({}: {detail})",
                    self.key_name,
                    self.zone.to_ascii(),
                    code.to_str()
                )))
            }
            ResponseCode::ServFail => {
                Err(self.unreachable("the server failed to apply the update (SERVFAIL)"))
            }
            ResponseCode::NotZone => Err(self.rejected(format!(
                "a name is not inside zone `{}` (NOTZONE)",
                self.zone.to_ascii()
            ))),
            other => Err(self.rejected(format!(
                "the server refused the update ({})",
                other.to_str()
            ))),
        }
    }
}

fn delete_rrset(name: &Name, rtype: RecordType) -> Record {
    let mut delete = Record::update0(name.clone(), 0, rtype).into_record_of_rdata();
    delete.dns_class = DNSClass::ANY;
    delete
}

fn delete_one(name: &Name, rdata: RData) -> Record {
    let mut delete = Record::from_rdata(name.clone(), 0, rdata);
    delete.dns_class = DNSClass::NONE;
    delete
}

#[async_trait]
impl Router for DnsRouter {
    fn name(&self) -> &str {
        &self.name
    }

    /// Reads the managed names, then (unless they already hold the right
    /// records) sends one signed update whose prerequisites are what was read.
    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        let expected = self.read().await?;
        self.route_from(routes, &expected).await
    }

    /// Reads the writer name, then removes `member`'s record from it with
    /// the read records as prerequisite.
    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        let expected = self
            .with_connection("reading the writer name", async |connection| {
                self.query_name(connection, &self.writer).await
            })
            .await?;
        self.withdraw_from(member, &expected).await
    }
}
