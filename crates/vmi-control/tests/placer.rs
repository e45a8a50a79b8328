//! The placer end to end: a real control service and fake sites — tiny axum routers on 127.0.0.1 that record the
//! migrate orders they receive and answer as told — with terminal reports sent through [`ControlClient`].
//!
//! Most tests drive the placer round by round ([`PlacerRounds`], at times they choose) over the service's own store
//! and reports, so "nothing moves" is what a round answered, never what a sleep failed to see; the last two run it
//! as [`serve_with`] does.

// A test's stand-in router, not a service's: nothing for the API reference to describe.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vmi_control::access::Guard;
use vmi_control::{
    Move, PlacerRounds, PolicyParams, Reports, ServeOptions, ServiceTrust, SqliteStore, Store, app_with, now_ms,
    serve_with,
};
use vmi_control_api::auth::Principal;
use vmi_control_api::{Caller, ControlClient, MigrateOrder, SiteSpec};
use vmi_testkit::{eventually, within};
use vmi_trust::{Authority, ConnectionLimits};

/// Berlin and Munich, about 504 km apart.
const BERLIN: (f64, f64) = (52.520, 13.405);
const MUNICH: (f64, f64) = (48.137, 11.575);

/// A running control service over HTTPS from a test CA; its client acts as the operator.
struct Control {
    client: ControlClient,
    url: String,
    authority: Arc<Authority>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// A store with an operator credential, and that credential.
fn store_with_operator() -> (Arc<SqliteStore>, String) {
    let store = Arc::new(SqliteStore::in_memory().expect("in-memory store"));
    let operator = store.create_credential(&Principal::Operator { name: "test".into() }).expect("operator").token;
    (store, operator)
}

impl Control {
    /// Starts the service with `options` (their `trust` replaced by a fresh test CA).
    async fn start(mut options: ServeOptions) -> Control {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("https://{}", listener.local_addr().expect("local addr"));
        let (store, operator) = store_with_operator();
        let authority = Arc::new(Authority::create("test CA").expect("test CA"));
        options.trust = Some(ServiceTrust::new(authority.clone(), &["127.0.0.1"]).expect("service certificate"));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_with(listener, store, options, shutdown));
        Control::new(url, authority, &operator, stop, task)
    }

    /// The HTTP API without a placer of its own, and a placer over the same store and reports whose rounds the
    /// test runs.
    async fn driven(params: PolicyParams) -> (Control, PlacerRounds) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("https://{}", listener.local_addr().expect("local addr"));
        let (store, operator) = store_with_operator();
        let reports = Reports::new();
        let authority = Arc::new(Authority::create("test CA").expect("test CA"));
        let trust = ServiceTrust::new(authority.clone(), &["127.0.0.1"]).expect("service certificate");
        let router = app_with(store.clone(), reports.clone(), Some(trust.control.clone()), Arc::new(Guard::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(vmi_trust::serve(
            listener,
            router,
            Some(trust.server.clone()),
            ConnectionLimits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let control = Control::new(url, authority, &operator, stop, task);
        (control, PlacerRounds::new(store, reports, trust.control.caller.clone(), params))
    }

    fn new(
        url: String,
        authority: Arc<Authority>,
        operator: &str,
        stop: oneshot::Sender<()>,
        task: JoinHandle<std::io::Result<()>>,
    ) -> Control {
        let caller = Caller::trusting(authority.cert_pem()).expect("CA").with_bearer(operator);
        let client = ControlClient::new(&url, &caller).expect("client");
        Control { client, url, authority, stop, task }
    }

    /// A client acting as site `id`.
    fn site(&self, id: &str) -> ControlClient {
        site_client(&self.url, &self.authority, id)
    }

    async fn stop(self) {
        self.stop.send(()).expect("control task alive");
        let joined = within(Duration::from_secs(5), "the service to stop", self.task).await;
        joined.expect("serve task did not panic").expect("serve returned Ok");
    }
}

/// A client of the service at `url` acting as site `id`, with a certificate from `authority` naming it.
fn site_client(url: &str, authority: &Authority, id: &str) -> ControlClient {
    let name = vmi_trust::site_name(id).expect("site id");
    let credentials = authority.credentials_for(&name, &[]).expect("site certificate");
    let caller = Caller::machine(&credentials, &format!("site/{id}")).expect("site caller");
    ControlClient::new(url, &caller).expect("client for server")
}

/// `(user, from, to)` of each move, for comparisons.
fn moves(moves: &[Move]) -> Vec<(&str, &str, &str)> {
    moves.iter().map(|m| (m.user.as_str(), m.from.as_str(), m.to.as_str())).collect()
}

/// How a fake site answers a migrate order.
#[derive(Clone, Copy)]
enum Answer {
    /// Commit like a real migration would (the destination moves the placement to itself with a compare-and-set),
    /// 200.
    Commit,
    /// Wait, then answer 502 (an aborted migration) without touching the placement.
    Abort(Duration),
    /// Never answer.
    Never,
}

/// One migrate order as a fake site received it.
#[derive(Debug, Clone)]
struct Order {
    user: String,
    order: MigrateOrder,
    /// When the site received it, ms since the Unix epoch (the placer's clock).
    at_ms: u64,
}

#[derive(Clone)]
struct FakeState {
    /// The service's URL and CA, to act as the destination when committing.
    control_url: String,
    authority: Arc<Authority>,
    answer: Answer,
    orders: Arc<Mutex<Vec<Order>>>,
}

/// A fake site: registered and heartbeating once (healthy for 15 s, longer than any test here).
struct FakeSite {
    id: &'static str,
    orders: Arc<Mutex<Vec<Order>>>,
    task: JoinHandle<()>,
}

impl FakeSite {
    async fn start(control: &Control, id: &'static str, at: (f64, f64), answer: Answer) -> FakeSite {
        let site = control.site(id);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("https://{}", listener.local_addr().expect("local addr"));
        let orders = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            control_url: control.url.clone(),
            authority: control.authority.clone(),
            answer,
            orders: orders.clone(),
        };
        let router = Router::new().route("/v1/phones/{user}/migrate", post(migrate)).with_state(state);
        // Over TLS with a certificate naming the site, as the placer checks.
        let name = vmi_trust::site_name(id).expect("site id");
        let credentials = control.authority.credentials_for(&name, &["127.0.0.1"]).expect("site certificate");
        let tls = vmi_trust::server_config(&credentials).expect("server config");
        let task = tokio::spawn(async move {
            let serving =
                vmi_trust::serve(listener, router, Some(tls), ConnectionLimits::default(), std::future::pending());
            serving.await.expect("fake site serves");
        });
        let spec = SiteSpec { url: url.clone(), lat: at.0, lon: at.1, capacity: 8 };
        site.register_site(id, &spec).await.expect("register fake site");
        site.heartbeat(id, 0).await.expect("heartbeat");
        FakeSite { id, orders, task }
    }

    fn orders(&self) -> Vec<Order> {
        self.orders.lock().expect("orders lock").clone()
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn migrate(
    State(site): State<FakeState>,
    Path(user): Path<String>,
    Json(order): Json<MigrateOrder>,
) -> StatusCode {
    site.orders.lock().expect("orders lock").push(Order { user: user.clone(), order: order.clone(), at_ms: now_ms() });
    match site.answer {
        Answer::Commit => {
            // The destination takes ownership, as a real one does after the phone arrived.
            let destination = site_client(&site.control_url, &site.authority, &order.to);
            let epoch = destination.placement(&user).await.expect("placement").epoch;
            destination.move_placement(&user, &order.to, Some(epoch)).await.expect("commit");
            StatusCode::OK
        }
        Answer::Abort(after) => {
            tokio::time::sleep(after).await;
            StatusCode::BAD_GATEWAY
        }
        Answer::Never => std::future::pending().await,
    }
}

fn fast(params: PolicyParams) -> ServeOptions {
    ServeOptions { placer: Some(params), placer_every: Duration::from_millis(50), ..ServeOptions::default() }
}

#[tokio::test]
async fn a_report_near_another_site_moves_the_phone_there_after_the_dwell() {
    let dwell_ms = 400;
    let (control, mut placer) = Control::driven(PolicyParams { dwell_ms, ..PolicyParams::default() }).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&control, "site-berlin", BERLIN, Answer::Commit).await;
    let munich = FakeSite::start(&control, "site-munich", MUNICH, Answer::Commit).await;
    client.create_user("alice").await.unwrap();
    let token = client.create_device("alice", "pixel").await.unwrap().token;
    client.set_placement("alice", "site-berlin").await.unwrap();

    // No reports: the phone stays put.
    assert_eq!(placer.round(now_ms()), []);

    // Alice is in Munich now: the first round to see it starts the dwell, and only a round a whole dwell later
    // moves the phone.
    client.report(&token, Some(MUNICH.0), Some(MUNICH.1), BTreeMap::new()).await.unwrap();
    let seen = now_ms();
    assert_eq!(placer.round(seen), [], "the dwell starts");
    assert_eq!(placer.round(seen + dwell_ms - 1), [], "1 ms short of the dwell");
    assert_eq!(moves(&placer.round(seen + dwell_ms)), [("alice", "site-berlin", "site-munich")]);
    placer.settle().await;
    let orders = berlin.orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].user, "alice");
    assert_eq!(orders[0].order, MigrateOrder { to: "site-munich".into() });
    let placement = client.placement("alice").await.unwrap();
    assert_eq!((placement.site.as_str(), placement.epoch), ("site-munich", 2));

    // Settled: more reports from Munich order nothing more, however long they keep coming.
    for step in 0..4 {
        client.report(&token, Some(MUNICH.0), Some(MUNICH.1), BTreeMap::new()).await.unwrap();
        assert_eq!(placer.round(now_ms() + step * dwell_ms), [], "round {step} after the move");
    }
    assert_eq!((berlin.orders().len(), munich.orders().len()), (1, 0));

    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}

/// Draining needs no dwell: the first round after it moves every phone off the site.
#[tokio::test]
async fn draining_a_site_moves_all_its_phones_away() {
    let (control, mut placer) = Control::driven(PolicyParams::default()).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&control, "site-berlin", BERLIN, Answer::Commit).await;
    let munich = FakeSite::start(&control, "site-munich", MUNICH, Answer::Commit).await;
    for user in ["bob", "carol"] {
        client.create_user(user).await.unwrap();
        client.set_placement(user, "site-berlin").await.unwrap();
    }
    client.create_user("dave").await.unwrap();
    client.set_placement("dave", "site-munich").await.unwrap();

    assert_eq!(placer.round(now_ms()), [], "no reports, healthy sites: nobody moves");

    assert!(client.drain_site(berlin.id).await.unwrap().site.draining);
    assert_eq!(
        moves(&placer.round(now_ms())),
        [("bob", "site-berlin", "site-munich"), ("carol", "site-berlin", "site-munich")]
    );
    placer.settle().await;
    let mut users: Vec<_> = berlin.orders().into_iter().map(|o| (o.user, o.order.to)).collect();
    users.sort();
    assert_eq!(users, [("bob".to_owned(), "site-munich".to_owned()), ("carol".to_owned(), "site-munich".to_owned())]);
    for user in ["bob", "carol", "dave"] {
        assert_eq!(client.placement(user).await.unwrap().site, "site-munich");
    }
    assert!(munich.orders().is_empty());
    assert_eq!(placer.round(now_ms()), [], "drained: nothing left to move");

    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}

/// An order in flight counts as migrating (never sent twice); a failed one waits `retry_after_ms` from its answer
/// before the next.
#[tokio::test]
async fn a_failed_order_is_retried_only_after_the_back_off() {
    let retry_after_ms = 500;
    let (control, mut placer) = Control::driven(PolicyParams { retry_after_ms, ..PolicyParams::default() }).await;
    let client = control.client.clone();
    let answer_after = Duration::from_millis(400);
    let berlin = FakeSite::start(&control, "site-berlin", BERLIN, Answer::Abort(answer_after)).await;
    let munich = FakeSite::start(&control, "site-munich", MUNICH, Answer::Commit).await;
    client.create_user("erin").await.unwrap();
    client.set_placement("erin", "site-berlin").await.unwrap();
    client.drain_site(berlin.id).await.unwrap();

    assert_eq!(moves(&placer.round(now_ms())), [("erin", "site-berlin", "site-munich")]);
    assert_eq!(placer.round(now_ms()), [], "an order in flight is not sent again");
    placer.settle().await;
    let orders = berlin.orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(client.placement("erin").await.unwrap().site, "site-berlin", "aborted: still on the source");

    // The answer came at least `answer_after` after the order arrived, and the back-off runs from the answer.
    let earliest_retry = orders[0].at_ms + answer_after.as_millis() as u64 + retry_after_ms;
    assert_eq!(placer.round(earliest_retry - 1), [], "still backing off");
    assert_eq!(moves(&placer.round(now_ms() + retry_after_ms)), [("erin", "site-berlin", "site-munich")]);
    placer.settle().await;
    assert_eq!(berlin.orders().len(), 2);

    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}

/// With [`ServeOptions::default`]: the placer is on by default and runs by itself.
#[tokio::test]
async fn default_options_run_the_placer() {
    let control = Control::start(ServeOptions::default()).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&control, "site-berlin", BERLIN, Answer::Commit).await;
    let munich = FakeSite::start(&control, "site-munich", MUNICH, Answer::Commit).await;
    client.create_user("bob").await.unwrap();
    client.set_placement("bob", "site-berlin").await.unwrap();
    client.drain_site(berlin.id).await.unwrap();
    eventually(Duration::from_secs(10), "an order for bob's phone", async || !berlin.orders().is_empty()).await;
    eventually(Duration::from_secs(10), "bob's phone on site-munich", async || {
        client.placement("bob").await.is_ok_and(|p| p.site == "site-munich")
    })
    .await;

    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}

/// Shutting the service down does not wait for a site that never answers.
#[tokio::test]
async fn shutdown_abandons_orders_in_flight() {
    let control = Control::start(fast(PolicyParams::default())).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&control, "site-berlin", BERLIN, Answer::Never).await;
    let munich = FakeSite::start(&control, "site-munich", MUNICH, Answer::Commit).await;
    client.create_user("frank").await.unwrap();
    client.set_placement("frank", "site-berlin").await.unwrap();
    client.drain_site(berlin.id).await.unwrap();
    eventually(Duration::from_secs(10), "an order in flight", async || !berlin.orders().is_empty()).await;

    // Waiting for the answer would wait forever: stopping at all is the proof.
    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}
