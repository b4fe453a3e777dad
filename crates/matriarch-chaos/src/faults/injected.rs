//! What an injected fault did.

/// What an injected fault did: the node it hit, a description, and when it took
/// effect.
#[derive(Clone, Debug, Default)]
pub struct Injected {
    /// The node hit, if a node was.
    pub node: Option<usize>,
    /// What was done.
    pub detail: String,
    /// When the fault took effect (µs since the epoch; right after the signal,
    /// link change, rule or write that makes it).
    pub at_us: u64,
    /// How long each switchover took (ms), for [`FaultKind::SecondSwitchover`](super::FaultKind::SecondSwitchover).
    pub switchover_ms: Vec<f64>,
}

impl Injected {
    /// A fault that hit `node` (if it hit one) and took effect at `at_us`.
    pub(super) fn new(node: Option<usize>, at_us: u64, detail: String) -> Injected {
        Injected {
            node,
            detail,
            at_us,
            switchover_ms: Vec::new(),
        }
    }
}
