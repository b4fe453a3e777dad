//! A primary whose DCS stops answering for a while (an etcd leader
//! election: no keep-alive is answered until a new leader is elected) keeps
//! taking writes until `ttl` minus the write-stop margin after its last
//! renewal was sent, and only then is stopped by its fence, still before the
//! lock can expire. The margin is an eighth of the ttl (at most
//! `retry_timeout`), not `retry_timeout` itself: the fence's SIGKILL takes
//! milliseconds, so at the defaults (4/1/1.5) a primary rides out a stall of
//! at least 2 s (3.5 s when its last renewal was fresh) instead of 1 s
//! (issue 20's soak: etcd elections of 1 to 2.9 s).

use std::time::Duration;

use matriarch_model::ClusterConfig;

mod support;
use support::timed::{run_beside, timed_leader_with};

/// When the stall starts (the engine has led for a while by then).
const STALL_AT: Duration = Duration::from_secs(10);

/// How long after a renewal writes may go on: ttl minus the margin.
fn fence_window(config: &ClusterConfig) -> Duration {
    config.ttl - config.write_stop_margin(config.ttl)
}

#[tokio::test(start_paused = true)]
async fn a_primary_rides_out_a_dcs_stall_shorter_than_its_fence_window() {
    let config = ClusterConfig::default();
    // The last renewal may be up to one loop_wait old when the stall starts,
    // and a DCS that refuses at once is asked again a quarter of
    // retry_timeout later (the check below also reconnects on its 100 ms
    // ticks): the worst case.
    let stall = fence_window(&config)
        - config.loop_wait
        - config.retry_timeout / 4
        - Duration::from_millis(100);
    assert!(
        stall > Duration::from_secs(2),
        "a 2 s etcd election is ridden out at the defaults: {stall:?}"
    );
    let (engine, leader) = timed_leader_with(|_| {}).await;
    let check = async {
        let lost = leader
            .tick_until_the_lock_is_lost(250, |now| {
                leader
                    .connection
                    .set_reachable(!(STALL_AT..STALL_AT + stall).contains(&now));
                let fired = leader.fence.fired();
                assert_eq!(fired, None, "the fence fired during a stall of {stall:?}");
                assert!(
                    leader.pg.inner.is_writable_primary(),
                    "not writable at {now:?}"
                );
            })
            .await;
        assert_eq!(lost, None, "the lock was lost");
    };
    run_beside(engine, Duration::from_secs(26), check).await;
    leader.assert_postgres_left_alone();
}

#[tokio::test(start_paused = true)]
async fn a_longer_stall_stops_writes_by_the_fence_window_before_the_lock_can_expire() {
    let config = ClusterConfig::default();
    let (engine, leader) = timed_leader_with(|_| {}).await;
    let check = async {
        let lock_free_at = leader
            .tick_until_the_lock_is_lost(300, |now| {
                leader.connection.set_reachable(now < STALL_AT);
            })
            .await
            .expect("the lock of a primary cut off for good stayed");
        let fired_at = leader.fired_before(lock_free_at);
        // Not before the window after the last renewal (at most one loop
        // before the stall), and by the window after the stall began.
        assert!(
            fired_at >= STALL_AT + fence_window(&config) - config.loop_wait,
            "fired at {fired_at:?}: earlier than needed"
        );
        assert!(
            fired_at <= STALL_AT + fence_window(&config),
            "fired at {fired_at:?}: later than the window after the stall began"
        );
    };
    run_beside(engine, Duration::from_secs(31), check).await;
}
