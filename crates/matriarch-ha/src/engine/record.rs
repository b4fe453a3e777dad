//! The member record as the engine publishes it: the decision's record, with
//! what only this loop and the node know, laid out as Patroni's
//! `touch_member` writes it.

use matriarch_dcs::Dcs;
use matriarch_model::{Member, MemberState, Role};
use matriarch_postgres::Postgres;
use matriarch_router::Router;

use super::state::Engine;
use crate::decide::LocalPostgres;

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// `member` (the decision's record, made from `local`) as published: in
    /// `creating replica` state while a clone runs; a running replica's
    /// replay position (never beyond the record's freshest position, since
    /// both come from `local`); the node's pending and scheduled restarts.
    pub(super) fn published_member(&self, member: &Member, local: &LocalPostgres) -> Member {
        let mut member = self.while_cloning(member).into_owned();
        if member.role == Role::Replica && member.state == MemberState::Running {
            member.replayed_lsn = local.replayed;
        }
        if let Some(extras) = &self.member_extras {
            member.pending_restart = extras.pending_restart();
            member.scheduled_restart = extras.scheduled_restart();
        }
        member
    }
}
