//! Reading the scope: retried reads and the whole [`ClusterView`].

use std::future::Future;

use matriarch_dcs::DcsError;
use matriarch_model::{ClusterView, RawEntry};
use tracing::debug;
use zookeeper_client as zk;

use super::{version_of, zxid, Inner, READ_RETRY_PAUSE};
use crate::error::{is_connection_failure, map_zk, BACKEND};
use crate::session::Session;

impl Inner {
    /// A read, retried after connection losses (reads are idempotent); the
    /// caller bounds it.
    pub(super) async fn read<T, F, Fut>(&self, what: &str, op: F) -> Result<T, zk::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, zk::Error>>,
    {
        loop {
            match op().await {
                Err(e) if is_connection_failure(&e) => {
                    debug!(cluster = %self.scope(), what, error = %e, "connection lost during a read; retrying");
                    tokio::time::sleep(READ_RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn get(
        &self,
        session: &Session,
        path: &str,
    ) -> Result<Option<(Vec<u8>, zk::Stat)>, DcsError> {
        match self.read(path, || session.client.get_data(path)).await {
            Ok(found) => Ok(Some(found)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(map_zk(&format!("reading {path}"), e)),
        }
    }

    pub(super) async fn stat(
        &self,
        session: &Session,
        path: &str,
    ) -> Result<Option<zk::Stat>, DcsError> {
        self.read(path, || session.client.check_stat(path))
            .await
            .map_err(|e| map_zk(&format!("reading the stat of {path}"), e))
    }

    pub(super) async fn read_view(&self, session: &Session) -> Result<ClusterView, DcsError> {
        let (mut revision, dirs) = self
            .read(&self.scope_dir, || self.read_dirs(session))
            .await
            .map_err(|e| map_zk(&format!("listing {}", self.scope_dir), e))?;
        let (scope_children, member_children) = dirs;
        let mut keys: Vec<(String, String)> = Vec::new();
        for child in scope_children {
            if child != "members" {
                keys.push((format!("{}/{child}", self.scope_dir), child));
            }
        }
        for child in member_children {
            keys.push((
                format!("{}/{child}", self.members_dir),
                format!("{}{child}", matriarch_model::MEMBERS_DIR),
            ));
        }
        let results = self
            .read(&self.scope_dir, || async {
                let mut reader = session.client.new_multi_reader();
                for (path, _) in &keys {
                    reader.add_get_data(path)?;
                }
                reader.commit().await
            })
            .await
            .map_err(|e| map_zk(&format!("reading the keys under {}", self.scope_dir), e))?;
        let mut entries = Vec::with_capacity(keys.len());
        for ((path, key), result) in keys.into_iter().zip(results) {
            match result {
                zk::MultiReadResult::Data { data, stat } => {
                    revision = revision.max(zxid(stat.mzxid));
                    entries.push(RawEntry {
                        key,
                        value: data,
                        version: version_of(&stat),
                    });
                }
                // Deleted between the listing and the read.
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } => {
                    return Err(map_zk(&format!("reading {path}"), err));
                }
                other => {
                    return Err(DcsError::Backend {
                        backend: BACKEND,
                        message: format!("reading {path}: unexpected answer {other:?}"),
                    })
                }
            }
        }
        Ok(ClusterView::decode(revision, entries))
    }

    /// Lists the scope and the members folder in one multi-read; the
    /// revision so far is the largest zxid of their last changes.
    pub(super) async fn read_dirs(
        &self,
        session: &Session,
    ) -> Result<(u64, (Vec<String>, Vec<String>)), zk::Error> {
        let mut reader = session.client.new_multi_reader();
        reader.add_get_data(&self.scope_dir)?;
        reader.add_get_children(&self.scope_dir)?;
        reader.add_get_data(&self.members_dir)?;
        reader.add_get_children(&self.members_dir)?;
        let results = reader.commit().await?;
        let mut revision = 0u64;
        let mut lists = [Vec::new(), Vec::new()];
        for (index, result) in results.into_iter().enumerate() {
            match result {
                zk::MultiReadResult::Data { stat, .. } => {
                    revision = revision.max(zxid(stat.pzxid)).max(zxid(stat.mzxid));
                }
                zk::MultiReadResult::Children { children } => {
                    if let Some(list) = lists.get_mut(index / 2) {
                        *list = children;
                    }
                }
                // A folder that does not exist (yet) is empty.
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } => return Err(err),
                other => {
                    return Err(zk::Error::UnexpectedError(format!(
                        "unexpected multi-read answer {other:?}"
                    )))
                }
            }
        }
        let [scope, members] = lists;
        Ok((revision, (scope, members)))
    }
}
