//! The whole DCS conformance suite against real etcd: on a single member, and
//! on a three-member cluster whose clients are spread over the members.

mod common;

mod single_member {
    use super::common::single_member_harness;
    matriarch_dcs::dcs_conformance_tests!(single_member_harness());
}

mod three_members {
    use super::common::cluster_harness;
    matriarch_dcs::dcs_conformance_tests!(cluster_harness());
}
