//! The pgBackRest stanza follows the leadership: whenever this member
//! becomes the leader (the bootstrap of a new cluster, a failover or a
//! switchover) it runs `stanza-create`, which makes the stanza the first time
//! and only checks it afterwards (it is idempotent).

use std::sync::Arc;
use std::time::Duration;

use matriarch_ha::{EngineRole, StatusHandle};
use matriarch_postgres::PgController;
use tracing::{info, warn};

/// Tries before giving up until the next change of leadership.
const ATTEMPTS: u32 = 10;
/// Pause between tries (PostgreSQL may still be starting).
const RETRY_AFTER: Duration = Duration::from_secs(3);

/// Runs `stanza-create` each time this member becomes the leader.
pub(crate) async fn stanza_on_leadership(mut status: StatusHandle, pg: Arc<PgController>) {
    let mut leading = false;
    loop {
        let now = status.get().role == EngineRole::Leader;
        if now && !leading {
            create_stanza(&pg, &status).await;
        }
        leading = now;
        if !status.changed().await {
            return;
        }
    }
}

async fn create_stanza(pg: &PgController, status: &StatusHandle) {
    for attempt in 1..=ATTEMPTS {
        if status.get().role != EngineRole::Leader {
            return;
        }
        match pg.stanza_create().await {
            Ok(()) => {
                info!("pgBackRest stanza-create done: the stanza matches this cluster");
                return;
            }
            Err(error) => {
                warn!(%error, attempt, "pgBackRest stanza-create failed");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}
