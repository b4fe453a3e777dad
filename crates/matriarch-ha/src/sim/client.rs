//! The workload: a client committing every 20 ms on whichever node takes
//! writes, and WAL shipping on the same beat.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use matriarch_postgres::memory::Commit;
use tokio::time::Instant;

use super::world::{lock, World};

/// A client writing every 20 ms to whichever node is writable, and the
/// replication of every running replica from its upstream.
pub(super) async fn traffic(world: Arc<Mutex<World>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut world = lock(&world);
        let now = Instant::now();
        world.pg.servers().replicate();
        let writers: Vec<usize> = (0..world.nodes.len())
            .filter(|&i| world.writable(i, now))
            .collect();
        if writers.len() > 1 {
            world.check_single_writer();
        }
        // A commit on a primary that cannot acknowledge it still lands in
        // its WAL (the client gives up waiting).
        let open: Vec<usize> = (0..world.nodes.len())
            .filter(|&i| {
                world.pg.servers().server(i).is_running_primary() && world.fence_open(i, now)
            })
            .collect();
        let Some(&primary) = writers.first().or(open.first()) else {
            continue;
        };
        let commit = world.pg.servers().commit(primary);
        if let Commit::Acknowledged { id, standbys } = commit {
            world.acknowledged.push(id);
            world.acknowledged_total += 1;
            world.check_strict_commit(primary, id, standbys.len());
        }
    }
}
