//! Persistent records written with compare-and-swap on the znode version,
//! and the `initialize` race.

use matriarch_dcs::{DcsError, Expected};
use matriarch_model::{
    decode_initialize, encode_initialize, DcsKey, Initialize, Record, SystemId, Version,
};
use tracing::info;
use zookeeper_client as zk;

use super::{persistent, version_of, Inner, ATTEMPTS};
use crate::error::{map_zk, BACKEND};
use crate::session::Session;

impl Inner {
    pub(super) fn conflict(key: &DcsKey, expected: Expected, found: Option<&zk::Stat>) -> DcsError {
        DcsError::Conflict {
            key: key.relative_path(),
            expected,
            found: found.map(version_of),
        }
    }

    /// Creates the persistent znode of a key of the scope.
    async fn create_persistent(
        &self,
        session: &Session,
        path: &str,
        value: &[u8],
    ) -> Result<zk::Stat, zk::Error> {
        let options = persistent(&self.config);
        self.create_in(session, &self.scope_dir, (path, value), &options)
            .await
    }

    pub(super) async fn write(
        &self,
        record: &Record,
        expected: Expected,
    ) -> Result<Version, DcsError> {
        let session = self.session().await?;
        let key = record.key();
        let path = self.path(&key);
        let value = record.encode();
        match expected {
            Expected::Absent => match self.create_persistent(&session, &path, &value).await {
                Ok(stat) => Ok(version_of(&stat)),
                Err(zk::Error::NodeExists) => {
                    let found = self.stat(&session, &path).await?;
                    Err(Self::conflict(&key, expected, found.as_ref()))
                }
                Err(e) => Err(map_zk(&format!("creating {path}"), e)),
            },
            Expected::Version(version) => {
                let Some(stat) = self.stat(&session, &path).await? else {
                    return Err(Self::conflict(&key, expected, None));
                };
                if version_of(&stat) != version {
                    return Err(Self::conflict(&key, expected, Some(&stat)));
                }
                match session
                    .client
                    .set_data(&path, &value, Some(stat.version))
                    .await
                {
                    Ok(stat) => Ok(version_of(&stat)),
                    Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                        let found = self.stat(&session, &path).await?;
                        Err(Self::conflict(&key, expected, found.as_ref()))
                    }
                    Err(e) => Err(map_zk(&format!("writing {path}"), e)),
                }
            }
            Expected::Any => {
                for _ in 0..ATTEMPTS {
                    match session.client.set_data(&path, &value, None).await {
                        Ok(stat) => return Ok(version_of(&stat)),
                        Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(map_zk(&format!("writing {path}"), e)),
                    }
                    match self.create_persistent(&session, &path, &value).await {
                        Ok(stat) => return Ok(version_of(&stat)),
                        Err(zk::Error::NodeExists) => {}
                        Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
                    }
                }
                Err(DcsError::Backend {
                    backend: BACKEND,
                    message: format!("writing {path}: the znode kept changing"),
                })
            }
        }
    }

    pub(super) async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        let session = self.session().await?;
        let path = self.path(key);
        let version = match expected {
            Expected::Any => None,
            Expected::Absent => {
                return match self.stat(&session, &path).await? {
                    None => Ok(()),
                    Some(stat) => Err(Self::conflict(key, expected, Some(&stat))),
                }
            }
            Expected::Version(version) => {
                let Some(stat) = self.stat(&session, &path).await? else {
                    return Err(Self::conflict(key, expected, None));
                };
                if version_of(&stat) != version {
                    return Err(Self::conflict(key, expected, Some(&stat)));
                }
                Some(stat.version)
            }
        };
        match session.client.delete(&path, version).await {
            Ok(()) => Ok(()),
            Err(zk::Error::NoNode) if version.is_none() => Ok(()),
            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                let found = self.stat(&session, &path).await?;
                Err(Self::conflict(key, expected, found.as_ref()))
            }
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }

    pub(super) async fn try_initialize(&self) -> Result<bool, DcsError> {
        let session = self.session().await?;
        let path = self.path(&DcsKey::Initialize);
        let value = encode_initialize(&Initialize::InProgress);
        match self.create_persistent(&session, &path, &value).await {
            Ok(_) => {
                info!(cluster = %self.scope(), "won the initialize race");
                Ok(true)
            }
            Err(zk::Error::NodeExists) => Ok(false),
            Err(e) => Err(map_zk(&format!("creating {path}"), e)),
        }
    }

    pub(super) async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        let session = self.session().await?;
        let key = DcsKey::Initialize;
        let path = self.path(&key);
        let Some((data, stat)) = self.get(&session, &path).await? else {
            return Err(Self::conflict(&key, Expected::Any, None));
        };
        if decode_initialize(&data) != Ok(Initialize::InProgress) {
            return Err(Self::conflict(&key, Expected::Any, Some(&stat)));
        }
        let value = encode_initialize(&Initialize::Done(system_id));
        match session
            .client
            .set_data(&path, &value, Some(stat.version))
            .await
        {
            Ok(_) => Ok(()),
            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                let found = self.stat(&session, &path).await?;
                Err(Self::conflict(&key, Expected::Any, found.as_ref()))
            }
            Err(e) => Err(map_zk(&format!("writing {path}"), e)),
        }
    }

    pub(super) async fn cancel_initialize(&self) -> Result<(), DcsError> {
        let session = self.session().await?;
        let path = self.path(&DcsKey::Initialize);
        let Some((data, stat)) = self.get(&session, &path).await? else {
            return Ok(());
        };
        if decode_initialize(&data) != Ok(Initialize::InProgress) {
            return Ok(());
        }
        match session.client.delete(&path, Some(stat.version)).await {
            Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => Ok(()),
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }
}
