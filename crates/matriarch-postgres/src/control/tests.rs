//! The engine's promote-then-confirm step against the mock: the order of calls it relies on.

use super::*;
use mockall::Sequence;

use crate::{Operation, PgRole, ServerState};

/// The step an engine runs after winning the leader lock: promote, then
/// confirm the server runs read-write on a newer timeline before it
/// routes writers to it.
async fn promote_and_confirm(
    postgres: &dyn Postgres,
    timeline_before: Timeline,
) -> Result<Timeline, String> {
    let timeline = postgres.promote().await.map_err(|err| err.to_string())?;
    if timeline <= timeline_before {
        return Err(format!(
            "timeline {timeline} is not newer than {timeline_before}"
        ));
    }
    let state = postgres.observe().await.map_err(|err| err.to_string())?;
    if state.role() != Some(PgRole::Primary) || state.timeline != Some(timeline) {
        return Err(format!(
            "after promotion: {:?} on timeline {:?}",
            state.server, state.timeline
        ));
    }
    Ok(timeline)
}

fn primary_on(timeline: Timeline) -> LocalState {
    LocalState {
        server: ServerState::Running(PgRole::Primary),
        timeline: Some(timeline),
        ..LocalState::empty()
    }
}

#[tokio::test]
async fn mock_drives_a_promotion_step_in_order() {
    let mut postgres = MockPostgres::new();
    let mut order = Sequence::new();
    postgres
        .expect_promote()
        .times(1)
        .in_sequence(&mut order)
        .returning(|| Ok(Timeline(3)));
    postgres
        .expect_observe()
        .times(1)
        .in_sequence(&mut order)
        .returning(|| Ok(primary_on(Timeline(3))));

    assert_eq!(
        promote_and_confirm(&postgres, Timeline(2)).await,
        Ok(Timeline(3))
    );
}

#[tokio::test]
async fn mock_reports_a_failed_promotion_without_observing() {
    let mut postgres = MockPostgres::new();
    postgres.expect_promote().times(1).returning(|| {
        Err(PostgresError::Timeout {
            operation: Operation::Promote,
            after: std::time::Duration::from_secs(30),
        })
    });
    postgres.expect_observe().never();

    let err = promote_and_confirm(&postgres, Timeline(2))
        .await
        .unwrap_err();
    assert_eq!(err, "promote did not finish within 30s");
}

#[tokio::test]
async fn mock_catches_a_promotion_that_did_not_change_timeline() {
    let mut postgres = MockPostgres::new();
    postgres
        .expect_promote()
        .times(1)
        .returning(|| Ok(Timeline(2)));

    let err = promote_and_confirm(&postgres, Timeline(2))
        .await
        .unwrap_err();
    assert!(err.contains("not newer"), "{err}");
}
