//! The [`Router`] trait every backend implements, and the routes it sends
//! clients along.

use std::sync::Arc;

use async_trait::async_trait;
use matriarch_model::MemberName;

use crate::error::RouterError;

/// Where a member's PostgreSQL listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The member.
    pub member: MemberName,
    /// An IP address or a host name.
    pub host: String,
    /// The PostgreSQL port.
    pub port: u16,
}

/// Where clients should go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Routes {
    /// The one member that takes writes.
    pub primary: Endpoint,
    /// The members that serve reads: healthy replicas without the
    /// `noloadbalance` tag, chosen by the engine (never the primary).
    pub replicas: Vec<Endpoint>,
}

/// Sends clients to the right members: writers to the primary, readers to
/// the replicas.
///
/// # Fencing rule
///
/// Two reachable writers can corrupt a cluster beyond repair, so routing
/// follows the leader lock:
///
/// - Only the member holding the leader lock calls [`Router::route`], and
///   only after its promotion succeeded.
/// - A demoting member calls only [`Router::withdraw`], and only for itself.
///
/// What every backend must guarantee:
///
/// - `route` makes `routes.primary` the only writer: it registers the new
///   primary first and then deregisters every other writer, in that order, so
///   that clients are never left without a writer longer than needed. The
///   moment when both are registered is safe only because the old primary
///   has already been demoted (or fenced itself when its lock expired) by the
///   time `route` is called; a backend must never register as writer
///   anything but `routes.primary`.
/// - `route` returns `Ok` only once the change is applied (for DNS: accepted
///   by the provider; clients may still hold cached answers for the record's
///   TTL, which is why PostgreSQL-level demotion comes first). On error, the
///   new primary may be registered while old writers are not yet removed; the
///   engine calls `route` again.
/// - `route` is idempotent: calling it again with the same routes changes
///   nothing at the backend.
/// - `withdraw` removes only that member, only from the writers (readers are
///   left alone), and is `Ok` if it was not a writer.
/// - Every call is bounded in time: a backend that cannot answer returns
///   [`RouterError::Unreachable`] instead of hanging, because
///   [`FanOut`](crate::FanOut) waits for all its routers.
#[async_trait]
pub trait Router: Send + Sync {
    /// The router's name, for logs and errors (e.g. `elb:prod-writer`).
    fn name(&self) -> &str;

    /// Sends writers to `routes.primary` and readers to `routes.replicas`.
    async fn route(&self, routes: &Routes) -> Result<(), RouterError>;

    /// Removes `member` from the writers.
    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError>;
}

/// `Router` for a smart pointer to a router: every call goes to the router
/// it points to.
macro_rules! forward_router {
    ($pointer:ident) => {
        #[async_trait]
        impl<R: Router + ?Sized> Router for $pointer<R> {
            fn name(&self) -> &str {
                (**self).name()
            }

            async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
                (**self).route(routes).await
            }

            async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
                (**self).withdraw(member).await
            }
        }
    };
}

forward_router!(Arc);
forward_router!(Box);
