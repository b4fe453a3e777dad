use super::*;

fn size(clusters: usize, promoted_ms: &[u64]) -> FleetFigures {
    FleetFigures {
        clusters,
        start_seconds: 1.0,
        rest: Some(Resources {
            seconds: 20.0,
            revisions: 10,
            watch_events: 40,
            watch_calls: 100,
            watch_streams: 0,
            full_reads: 10,
            cached_reads: 90,
            etcd_cpu_seconds: 2.0,
            etcd_rss_max_kb: 3 * 40 * 1024,
            process_cpu_seconds: 5.0,
            process_rss_max_kb: 50 * 1024,
        }),
        failovers: promoted_ms
            .iter()
            .map(|&ms| FailoverRun {
                lock_expired_ms: Some(ms - 100),
                lock_taken_ms: Some(ms - 50),
                promoted_ms: ms,
            })
            .collect(),
        agents_rss_kb: 300 * clusters as u64 * 3,
        ..FleetFigures::default()
    }
}

#[test]
fn rates_are_per_second_of_the_window_and_cpu_in_percent_of_a_core() {
    let idle = size(10, &[]).rest.unwrap();
    assert_eq!(idle.writes_per_second(), 0.5);
    assert_eq!(idle.watch_events_per_second(), 2.0);
    assert_eq!(idle.etcd_cpu_percent(), 10.0);
    assert_eq!(idle.process_cpu_percent(), 25.0);
    // An empty window gives rates of zero, not NaN.
    assert_eq!(Resources::default().writes_per_second(), 0.0);
}

#[test]
fn medians_and_per_agent_memory() {
    let s = size(10, &[5200, 4900, 5600, 5100]);
    assert_eq!(s.agents(), 30);
    assert_eq!(s.failover_median_ms(), Some(5150.0));
    assert_eq!(s.lock_expired_median_ms(), Some(5050.0));
    assert_eq!(s.rss_per_agent_kb(), Some(300.0));
    assert_eq!(size(1, &[]).failover_median_ms(), None);
}

#[test]
fn the_goal_compares_the_largest_fleet_with_one_cluster() {
    let met = goal(&[
        size(1, &[5000, 5100, 5200]),
        size(10, &[9000]),
        size(200, &[5500]),
    ])
    .unwrap();
    assert_eq!(
        (met.clusters, met.base_ms, met.largest_ms),
        (200, 5100.0, 5500.0)
    );
    assert!(met.met(), "{}", met.sentence());
    let missed = goal(&[size(1, &[5000]), size(200, &[5600])]).unwrap();
    assert!(!missed.met());
    assert!(
        missed.sentence().contains("NOT met"),
        "{}",
        missed.sentence()
    );
    // Without N = 1, or without a larger completed size, there is no goal.
    assert_eq!(goal(&[size(200, &[5000])]), None);
    assert_eq!(
        goal(&[size(1, &[5000]), FleetFigures::failed(200, "etcd".into())]),
        None
    );
}

#[test]
fn the_table_has_a_row_per_size_with_failures_named() {
    let table = table(&[
        size(1, &[5000, 5200]),
        FleetFigures::failed(200, "no failover".into()),
    ]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[2].starts_with(
            "| 1 | 3 | 1.0 s | 0.5 / - | 2.0 / - | 10.0 % / - | 25.0 % / - | 120 MiB |"
        ),
        "{}",
        rows[2]
    );
    assert!(rows[2].contains("5.100 s (2)"), "{}", rows[2]);
    assert!(rows[3].contains("failed: no failover"), "{}", rows[3]);
}
