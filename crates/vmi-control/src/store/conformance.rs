//! One suite every [`Store`] must pass: each case gets a fresh, empty store and checks one behaviour through the
//! trait alone (compare-and-set, leases as heartbeats, failover, quotas, tokens, the catalogue, ...). The SQLite
//! store runs it here; another store runs the same cases against its own engine.

use std::panic::AssertUnwindSafe;

use super::Store;

/// One case: a behaviour checked on a fresh store.
type Case = fn(&dyn Store);

/// Every case, by name.
pub(crate) const CASES: &[(&str, Case)] = &[
    (
        "access::operator_and_tenant_admin_tokens_name_their_principal",
        super::access::tests::operator_and_tenant_admin_tokens_name_their_principal,
    ),
    (
        "access::a_join_token_works_once_for_its_site_before_it_expires",
        super::access::tests::a_join_token_works_once_for_its_site_before_it_expires,
    ),
    (
        "access::the_audit_log_filters_by_user_site_principal_and_time",
        super::access::tests::the_audit_log_filters_by_user_site_principal_and_time,
    ),
    (
        "catalogue::the_checkpoint_catalogue_lists_each_copy_once_with_its_sites",
        super::catalogue::tests::the_checkpoint_catalogue_lists_each_copy_once_with_its_sites,
    ),
    (
        "migration_log::migrations_are_logged_newest_first",
        super::migration_log::tests::migrations_are_logged_newest_first,
    ),
    (
        "placements::placement_epoch_increments_on_change_only",
        super::placements::tests::placement_epoch_increments_on_change_only,
    ),
    (
        "placements::move_placement_is_a_compare_and_set_on_the_epoch",
        super::placements::tests::move_placement_is_a_compare_and_set_on_the_epoch,
    ),
    (
        "placements::a_failover_moves_a_phone_only_while_the_old_lease_is_expired_and_the_new_one_live",
        super::placements::tests::a_failover_moves_a_phone_only_while_the_old_lease_is_expired_and_the_new_one_live,
    ),
    (
        "placements::a_standby_is_recorded_only_by_the_owner_at_its_epoch_and_counts_only_for_that_epoch",
        super::placements::tests::a_standby_is_recorded_only_by_the_owner_at_its_epoch_and_counts_only_for_that_epoch,
    ),
    (
        "placements::racing_compare_and_sets_on_one_epoch_have_exactly_one_winner",
        super::placements::tests::racing_compare_and_sets_on_one_epoch_have_exactly_one_winner,
    ),
    (
        "placements::a_heartbeat_racing_a_failover_never_leaves_two_owners",
        super::placements::tests::a_heartbeat_racing_a_failover_never_leaves_two_owners,
    ),
    ("tenants::racing_admissions_never_pass_the_quota", super::tenants::tests::racing_admissions_never_pass_the_quota),
    ("sites::draining_is_a_stored_flag", super::sites::tests::draining_is_a_stored_flag),
    ("sites::site_health_follows_heartbeats", super::sites::tests::site_health_follows_heartbeats),
    (
        "sites::a_heartbeat_sends_the_placed_list_again_only_when_it_changed",
        super::sites::tests::a_heartbeat_sends_the_placed_list_again_only_when_it_changed,
    ),
    (
        "tenants::tenants_are_created_once_updated_and_listed_with_usage",
        super::tenants::tests::tenants_are_created_once_updated_and_listed_with_usage,
    ),
    (
        "tenants::admission_refuses_past_the_phone_quota_with_a_clear_message",
        super::tenants::tests::admission_refuses_past_the_phone_quota_with_a_clear_message,
    ),
    (
        "tenants::admission_refuses_past_the_memory_quota_and_users_without_tenant_are_unlimited",
        super::tenants::tests::admission_refuses_past_the_memory_quota_and_users_without_tenant_are_unlimited,
    ),
    (
        "tenants::image_versions_increase_and_roll_back_to_the_previous_one",
        super::tenants::tests::image_versions_increase_and_roll_back_to_the_previous_one,
    ),
    (
        "tenants::a_user_runs_their_tenants_image_or_the_default",
        super::tenants::tests::a_user_runs_their_tenants_image_or_the_default,
    ),
    ("users::users_are_unique_and_listed_by_name", super::users::tests::users_are_unique_and_listed_by_name),
    ("users::device_tokens_authenticate_until_revoked", super::users::tests::device_tokens_authenticate_until_revoked),
    (
        "users::unknown_and_malformed_tokens_do_not_authenticate",
        super::users::tests::unknown_and_malformed_tokens_do_not_authenticate,
    ),
    ("users::devices_need_an_existing_user", super::users::tests::devices_need_an_existing_user),
];

/// Runs every case, each on a store `make` returns fresh, and fails naming every case that failed.
pub(crate) fn run(make: &dyn Fn() -> Box<dyn Store>) {
    let mut failed = Vec::new();
    for (name, case) in CASES {
        let store = make();
        if std::panic::catch_unwind(AssertUnwindSafe(|| case(store.as_ref()))).is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "{} of {} conformance cases failed: {failed:?}", failed.len(), CASES.len());
}

#[test]
fn the_sqlite_store_passes_the_conformance_suite() {
    run(&|| Box::new(super::SqliteStore::in_memory().expect("in-memory store")));
}

#[test]
fn the_etcd_store_passes_the_conformance_suite_on_a_three_member_cluster() {
    let cluster = vmi_testkit::etcd::EtcdCluster::start("conformance", 3);
    let endpoints = cluster.endpoints();
    let case = std::sync::atomic::AtomicUsize::new(0);
    // Each case gets a prefix of its own on the one cluster: a fresh, empty store.
    run(&|| {
        let prefix = format!("case-{}/", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        Box::new(connect(&endpoints, &prefix).with_clock_leases())
    });
}

/// An etcd store, once the cluster has elected a leader.
pub(crate) fn connect(endpoints: &[String], prefix: &str) -> super::EtcdStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match super::EtcdStore::connect(endpoints, prefix) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "etcd not ready yet");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("etcd at {endpoints:?} did not answer within 30 s: {e}"),
        }
    }
}
