//! Removing the whole cluster: the scope's znode and every znode under it.

use matriarch_dcs::DcsError;
use tracing::warn;
use zookeeper_client as zk;

use super::{Inner, ATTEMPTS};
use crate::error::{map_zk, BACKEND};
use crate::session::Session;

impl Inner {
    /// Deletes `/<namespace>/<scope>` and everything under it, deepest
    /// first (ZooKeeper deletes only childless znodes). A znode created under
    /// a folder meanwhile makes that delete fail with `NotEmpty`: the tree is
    /// listed and deleted again, a few times at most.
    pub(super) async fn remove_cluster(&self) -> Result<(), DcsError> {
        let session = self.session().await?;
        for _ in 0..ATTEMPTS {
            let tree = self.list_tree(&session).await?;
            let count = tree.len();
            if self.delete_deepest_first(&session, tree).await? {
                warn!(cluster = %self.scope(), znodes = count, "removed the cluster from ZooKeeper");
                return Ok(());
            }
        }
        Err(DcsError::Backend {
            backend: BACKEND,
            message: format!(
                "removing {}: znodes kept being created under it; stop the cluster's members first",
                self.scope_dir
            ),
        })
    }

    /// The scope's znode and its descendants, every parent before its
    /// children; empty when the scope does not exist.
    async fn list_tree(&self, session: &Session) -> Result<Vec<String>, DcsError> {
        let mut tree = Vec::new();
        let mut pending = vec![self.scope_dir.clone()];
        while let Some(dir) = pending.pop() {
            match self.read(&dir, || session.client.list_children(&dir)).await {
                Ok(children) => {
                    pending.extend(children.into_iter().map(|child| format!("{dir}/{child}")));
                    tree.push(dir);
                }
                // Deleted meanwhile, or no scope at all.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(map_zk(&format!("listing {dir}"), e)),
            }
        }
        Ok(tree)
    }

    /// Deletes `tree` (parents before children) from the end. `Ok(false)`
    /// when a znode gained a child meanwhile.
    async fn delete_deepest_first(
        &self,
        session: &Session,
        tree: Vec<String>,
    ) -> Result<bool, DcsError> {
        for path in tree.iter().rev() {
            match session.client.delete(path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(zk::Error::NotEmpty) => return Ok(false),
                Err(e) => return Err(map_zk(&format!("deleting {path}"), e)),
            }
        }
        Ok(true)
    }
}
