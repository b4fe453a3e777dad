//! A router that records what it is asked to do, for tests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::error::RouterError;
use crate::router::{Endpoint, Router, Routes};

/// One call a [`RecordingRouter`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouterCall {
    /// [`Router::route`] with these routes.
    Route(Routes),
    /// [`Router::withdraw`] of this member.
    Withdraw(Endpoint),
}

#[derive(Debug, Default)]
struct Record {
    calls: Vec<RouterCall>,
    /// Errors to return, one per call, before calls succeed again.
    scheduled_failures: VecDeque<RouterError>,
}

/// A [`Router`] that changes nothing and records every call, for the
/// engine's tests; it can be told to fail upcoming calls.
///
/// Clones share the record, so a test keeps one clone and hands the other to
/// the code under test.
#[derive(Clone, Debug)]
pub struct RecordingRouter {
    name: Arc<str>,
    record: Arc<Mutex<Record>>,
}

impl RecordingRouter {
    /// A router called `name` that succeeds until told otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        RecordingRouter {
            name: Arc::from(name.into()),
            record: Arc::default(),
        }
    }

    /// Every call received so far, in order, failed ones included.
    pub fn calls(&self) -> Vec<RouterCall> {
        self.lock().calls.clone()
    }

    /// Makes the next `count` calls fail with `error` (after any failures
    /// already scheduled). The failed calls are still recorded.
    pub fn fail_next(&self, count: usize, error: RouterError) {
        let mut record = self.lock();
        record
            .scheduled_failures
            .extend(std::iter::repeat_n(error, count));
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        // A test that panicked while holding the lock cannot have left the
        // record half-written (each update is one push), so poisoning is ignored.
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, call: RouterCall) -> Result<(), RouterError> {
        let mut record = self.lock();
        record.calls.push(call);
        match record.scheduled_failures.pop_front() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Router for RecordingRouter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        self.answer(RouterCall::Route(routes.clone()))
    }

    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        self.answer(RouterCall::Withdraw(member.clone()))
    }
}
