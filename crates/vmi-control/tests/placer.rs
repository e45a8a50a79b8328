//! The placer end to end: a real control service ([`serve`] / [`serve_with`]) and fake sites — tiny axum routers on
//! 127.0.0.1 that record the migrate orders they receive and answer as told — with terminal reports sent through
//! [`ControlClient`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vmi_control::{PolicyParams, ServeOptions, SqliteStore, serve, serve_with};
use vmi_control_api::{ControlClient, MigrateOrder, SiteSpec};

/// Berlin and Munich, about 504 km apart.
const BERLIN: (f64, f64) = (52.520, 13.405);
const MUNICH: (f64, f64) = (48.137, 11.575);

/// A running control service.
struct Control {
    client: ControlClient,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Control {
    /// Starts the service with `options`, or with plain [`serve`] (placer at its defaults) when `None`.
    async fn start(options: Option<ServeOptions>) -> Control {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let store = Arc::new(SqliteStore::in_memory().expect("in-memory store"));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = match options {
            Some(options) => tokio::spawn(serve_with(listener, store, options, shutdown)),
            None => tokio::spawn(serve(listener, store, shutdown)),
        };
        Control { client: ControlClient::new(&url).expect("client"), stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).expect("control task alive");
        let joined = tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("serve stops within 5 s");
        joined.expect("serve task did not panic").expect("serve returned Ok");
    }
}

/// How a fake site answers a migrate order.
#[derive(Clone, Copy)]
enum Answer {
    /// Commit like a real migration would (the placement moves to the destination with a compare-and-set), 200.
    Commit,
    /// Wait, then answer 502 (an aborted migration) without touching the placement.
    Abort(Duration),
}

/// One migrate order as a fake site received it.
#[derive(Debug, Clone)]
struct Order {
    user: String,
    order: MigrateOrder,
    at: Instant,
}

#[derive(Clone)]
struct FakeState {
    control: ControlClient,
    answer: Answer,
    orders: Arc<Mutex<Vec<Order>>>,
}

/// A fake site: registered and heartbeating once (healthy for 15 s, longer than any test here).
struct FakeSite {
    id: &'static str,
    url: String,
    orders: Arc<Mutex<Vec<Order>>>,
    task: JoinHandle<()>,
}

impl FakeSite {
    async fn start(control: &ControlClient, id: &'static str, at: (f64, f64), answer: Answer) -> FakeSite {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let orders = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState { control: control.clone(), answer, orders: orders.clone() };
        let router = Router::new().route("/v1/phones/{user}/migrate", post(migrate)).with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("fake site serves");
        });
        let spec = SiteSpec { url: url.clone(), lat: at.0, lon: at.1, capacity: 8 };
        control.register_site(id, &spec).await.expect("register fake site");
        control.heartbeat(id, 0).await.expect("heartbeat");
        FakeSite { id, url, orders, task }
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
    site.orders.lock().expect("orders lock").push(Order {
        user: user.clone(),
        order: order.clone(),
        at: Instant::now(),
    });
    match site.answer {
        Answer::Commit => {
            let epoch = site.control.placement(&user).await.expect("placement").epoch;
            site.control.move_placement(&user, &order.to, Some(epoch)).await.expect("commit");
            StatusCode::OK
        }
        Answer::Abort(after) => {
            tokio::time::sleep(after).await;
            StatusCode::BAD_GATEWAY
        }
    }
}

/// Polls `done` every 20 ms until it holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

fn fast(params: PolicyParams) -> Option<ServeOptions> {
    Some(ServeOptions { placer: Some(params), placer_every: Duration::from_millis(50) })
}

#[tokio::test]
async fn a_report_near_another_site_moves_the_phone_there_after_the_dwell() {
    let dwell = Duration::from_millis(400);
    let params = PolicyParams { dwell_ms: dwell.as_millis() as u64, ..PolicyParams::default() };
    let control = Control::start(fast(params)).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&client, "site-berlin", BERLIN, Answer::Commit).await;
    let munich = FakeSite::start(&client, "site-munich", MUNICH, Answer::Commit).await;
    client.create_user("alice").await.unwrap();
    let token = client.create_device("alice", "pixel").await.unwrap().token;
    client.set_placement("alice", "site-berlin").await.unwrap();

    // No reports: the phone stays put.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(berlin.orders().is_empty() && munich.orders().is_empty());

    // Alice is in Munich now.
    let reported = Instant::now();
    client.report(&token, Some(MUNICH.0), Some(MUNICH.1), BTreeMap::new()).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || !berlin.orders().is_empty()).await, "no order within 5 s");
    let orders = berlin.orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].user, "alice");
    assert_eq!(orders[0].order, MigrateOrder { to: "site-munich".into(), to_url: munich.url.clone() });
    assert!(
        orders[0].at - reported >= dwell,
        "ordered {:?} after the report, dwell is {dwell:?}",
        orders[0].at - reported
    );

    let placement = client.placement("alice").await.unwrap();
    assert_eq!((placement.site.as_str(), placement.epoch), ("site-munich", 2));

    // Settled: more reports from Munich order nothing more.
    for _ in 0..4 {
        client.report(&token, Some(MUNICH.0), Some(MUNICH.1), BTreeMap::new()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!((berlin.orders().len(), munich.orders().len()), (1, 0));

    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}

/// With plain [`serve`]: the placer is on by default, and draining needs no dwell.
#[tokio::test]
async fn draining_a_site_moves_all_its_phones_away() {
    let control = Control::start(None).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&client, "site-berlin", BERLIN, Answer::Commit).await;
    let munich = FakeSite::start(&client, "site-munich", MUNICH, Answer::Commit).await;
    for user in ["bob", "carol"] {
        client.create_user(user).await.unwrap();
        client.set_placement(user, "site-berlin").await.unwrap();
    }
    client.create_user("dave").await.unwrap();
    client.set_placement("dave", "site-munich").await.unwrap();

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(berlin.orders().is_empty() && munich.orders().is_empty(), "no reports, healthy sites: nobody moves");

    assert!(client.drain_site(berlin.id).await.unwrap().site.draining);
    assert!(eventually(Duration::from_secs(5), || berlin.orders().len() == 2).await, "{:?}", berlin.orders());
    let mut users: Vec<_> = berlin.orders().into_iter().map(|o| (o.user, o.order.to)).collect();
    users.sort();
    assert_eq!(users, [("bob".to_owned(), "site-munich".to_owned()), ("carol".to_owned(), "site-munich".to_owned())]);
    for user in ["bob", "carol", "dave"] {
        assert_eq!(client.placement(user).await.unwrap().site, "site-munich");
    }
    assert!(munich.orders().is_empty());

    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}

/// An order in flight counts as migrating (never sent twice); a failed one waits `retry_after_ms` before the
/// next.
#[tokio::test]
async fn a_failed_order_is_retried_only_after_the_back_off() {
    let params = PolicyParams { retry_after_ms: 500, ..PolicyParams::default() };
    let control = Control::start(fast(params)).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&client, "site-berlin", BERLIN, Answer::Abort(Duration::from_millis(400))).await;
    let munich = FakeSite::start(&client, "site-munich", MUNICH, Answer::Commit).await;
    client.create_user("erin").await.unwrap();
    client.set_placement("erin", "site-berlin").await.unwrap();
    client.drain_site(berlin.id).await.unwrap();

    assert!(eventually(Duration::from_secs(5), || berlin.orders().len() >= 2).await, "no retry");
    let orders = berlin.orders();
    let gap = orders[1].at - orders[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "retried {gap:?} after the first order (400 ms answer + 500 ms back-off)"
    );
    assert_eq!(client.placement("erin").await.unwrap().site, "site-berlin", "aborted: still on the source");

    control.stop().await;
    berlin.stop().await;
    munich.stop().await;
}

/// Shutting the service down does not wait for a site that takes its time to answer.
#[tokio::test]
async fn shutdown_abandons_orders_in_flight() {
    let control = Control::start(fast(PolicyParams::default())).await;
    let client = control.client.clone();
    let berlin = FakeSite::start(&client, "site-berlin", BERLIN, Answer::Abort(Duration::from_secs(60))).await;
    let munich = FakeSite::start(&client, "site-munich", MUNICH, Answer::Commit).await;
    client.create_user("frank").await.unwrap();
    client.set_placement("frank", "site-berlin").await.unwrap();
    client.drain_site(berlin.id).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || !berlin.orders().is_empty()).await);

    let stopping = Instant::now();
    control.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
    berlin.stop().await;
    munich.stop().await;
}
