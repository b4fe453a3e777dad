//! The smallest HA built from matriarch's crates: three members race for the
//! leader lock on a [`MemoryDcs`]; the winner renews it; when the winner
//! stops renewing (it "crashes"), the lock expires and another member takes
//! over. Swap `MemoryDcs` for an etcd or ZooKeeper backend and nothing else
//! changes: that is the point of the `Dcs` trait.
//!
//! Run: `cargo run -p example-lock-race`

use std::time::Duration;

use matriarch_dcs::{Dcs, DcsError, MemoryDcs};
use matriarch_model::{KeyLayout, MemberName};

const TTL: Duration = Duration::from_millis(900);
const LOOP_WAIT: Duration = Duration::from_millis(200);

/// One member's loop: take the lock if free, renew it while held, and stop
/// renewing after `crash_after` loops as leader.
async fn member(dcs: MemoryDcs, name: MemberName, crash_after: usize) -> Result<(), DcsError> {
    let mut loops_as_leader = 0;
    loop {
        let view = dcs.read_view().await?;
        match view.leader_name() {
            Some(holder) if holder == &name => {
                if loops_as_leader == crash_after {
                    println!("{name}: crashing without releasing the lock");
                    return Ok(());
                }
                dcs.renew_leader(&name, TTL).await?;
                loops_as_leader += 1;
            }
            Some(holder) => println!("{name}: following {holder}"),
            None => {
                if dcs.acquire_leader(&name, TTL).await? {
                    println!("{name}: took the leader lock");
                } else {
                    println!("{name}: lost the race");
                }
            }
        }
        // Wake early when something changes, as matriarch's engine does.
        dcs.watch(view.revision, LOOP_WAIT).await?;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MemoryDcs::new(KeyLayout::new("service", "lock-race")?);
    let mut tasks = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let name = MemberName::new(name)?;
        // Every member "crashes" after a few loops as leader, so the lock
        // moves around the herd.
        tasks.push(tokio::spawn(member(store.connect(), name, 5)));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
