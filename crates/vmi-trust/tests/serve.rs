//! serve() end to end on 127.0.0.1: TLS with and without client certificates, plain HTTP from
//! loopback, foreign CAs refused, WebSockets over both, the header-read timeout, the per-IP cap and
//! graceful shutdown.

// A test's stand-in router, not a service's: nothing for the API reference to describe.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use vmi_trust::{Authority, ConnectionLimits, Credentials, Peer, Stream, client_config, dial, serve, server_config};

/// Generous bound on anything a test waits for; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(20);

struct Pki {
    ca: Authority,
    server: Credentials,
    site_a: Credentials,
}

fn pki() -> Pki {
    let ca = Authority::create("test provider CA").expect("ca");
    let server = ca.credentials_for("control.vmi", &["127.0.0.1"]).expect("server creds");
    let site_a = ca.credentials_for("site-a.site.vmi", &[]).expect("site creds");
    Pki { ca, server, site_a }
}

/// Lets the test hold a request in its handler: `entered` fires when it arrives, `release` lets it answer.
#[derive(Clone, Default)]
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

fn router(gate: Gate) -> axum::Router {
    axum::Router::new()
        .route(
            "/whoami",
            get(|Extension(peer): Extension<Peer>| async move {
                format!(
                    "tls={} certs={} site-a={} site-b={} loopback={}",
                    peer.tls,
                    peer.certs.is_some(),
                    peer.is("site-a.site.vmi"),
                    peer.is("site-b.site.vmi"),
                    peer.is_loopback()
                )
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                gate.entered.notify_one();
                gate.release.notified().await;
                "finished"
            }),
        )
        .route(
            "/echo",
            get(|upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if let Message::Text(_) = message
                            && socket.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        )
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
}

async fn start(tls: Option<&Credentials>, limits: ConnectionLimits, gate: Gate) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = tls.map(|creds| server_config(creds).expect("server config"));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, router(gate), tls, limits, async move {
        let _ = stopped.await;
    }));
    Running { addr, stop: Some(stop), served }
}

/// Sends one `GET path` with `Connection: close` and reads the whole answer.
async fn get_text<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await.expect("answer within patience")?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn whoami(stream: Stream) -> String {
    let mut stream = stream;
    get_text(&mut stream, "/whoami").await.expect("answer")
}

#[tokio::test]
async fn https_client_certificates_name_the_caller() {
    let pki = pki();
    let server = start(Some(&pki.server), ConnectionLimits::default(), Gate::default()).await;
    let addr = server.addr.to_string();

    let with_cert = client_config(pki.ca.cert_pem(), Some(&pki.site_a)).expect("client config");
    // Dialled by IP (the URL's host) and by identity name: both verify the server's certificate.
    for name in ["127.0.0.1", "control.vmi"] {
        let stream = dial(true, &addr, name, Some(with_cert.clone())).await.expect("dial");
        assert!(stream.is_tls());
        let answer = whoami(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("tls=true certs=true site-a=true site-b=false loopback=true"), "{answer}");
    }

    let without_cert = client_config(pki.ca.cert_pem(), None).expect("client config");
    let answer = whoami(dial(true, &addr, "127.0.0.1", Some(without_cert.clone())).await.expect("dial")).await;
    assert!(answer.contains("tls=true certs=false site-a=false"), "{answer}");

    // Plain HTTP from loopback is served on the same port.
    let answer = whoami(dial(false, &addr, "127.0.0.1", None).await.expect("dial")).await;
    assert!(answer.contains("tls=false certs=false site-a=false site-b=false loopback=true"), "{answer}");

    // The server's certificate names control.vmi, not site-b: dialling site-b there fails.
    match dial(true, &addr, "site-b.site.vmi", Some(without_cert.clone())).await {
        Err(vmi_trust::TrustError::Handshake { .. }) => {}
        other => panic!("a server not named site-b passed as site-b: {other:?}"),
    }
    // A TLS URL without a CA configured is refused before dialling.
    assert!(matches!(dial(true, &addr, "127.0.0.1", None).await, Err(vmi_trust::TrustError::NoTlsConfig { .. })));
}

#[tokio::test]
async fn certificates_from_another_ca_fail_the_handshake() {
    let pki = pki();
    let foreign = Authority::create("someone else's CA").expect("foreign ca");
    let server = start(Some(&pki.server), ConnectionLimits::default(), Gate::default()).await;
    let addr = server.addr.to_string();

    // A client certificate naming site-a, signed by a foreign CA: refused by the server. In TLS 1.3
    // the client learns it on its first read, so either the dial or the request fails.
    let impostor = foreign.credentials_for("site-a.site.vmi", &[]).expect("impostor creds");
    let config = client_config(pki.ca.cert_pem(), Some(&impostor)).expect("client config");
    match dial(true, &addr, "127.0.0.1", Some(config)).await {
        Ok(mut stream) => {
            let answer = get_text(&mut stream, "/whoami").await;
            assert!(answer.as_ref().map_or(true, |a| a.is_empty()), "the impostor was answered: {answer:?}");
        }
        Err(e) => assert!(matches!(e, vmi_trust::TrustError::Handshake { .. }), "{e:?}"),
    }

    // A server with a certificate from a foreign CA: refused by the client.
    let foreign_server = start(
        Some(&foreign.credentials_for("control.vmi", &["127.0.0.1"]).expect("creds")),
        ConnectionLimits::default(),
        Gate::default(),
    )
    .await;
    let config = client_config(pki.ca.cert_pem(), Some(&pki.site_a)).expect("client config");
    match dial(true, &foreign_server.addr.to_string(), "127.0.0.1", Some(config)).await {
        Err(vmi_trust::TrustError::Handshake { .. }) => {}
        other => panic!("a server from a foreign CA was trusted: {other:?}"),
    }
}

#[tokio::test]
async fn websockets_echo_over_tls_and_plain() {
    let pki = pki();
    let server = start(Some(&pki.server), ConnectionLimits::default(), Gate::default()).await;
    let addr = server.addr.to_string();
    let config = client_config(pki.ca.cert_pem(), Some(&pki.site_a)).expect("client config");
    for tls in [true, false] {
        let stream = dial(tls, &addr, "127.0.0.1", Some(config.clone())).await.expect("dial");
        let scheme = if tls { "wss" } else { "ws" };
        let (mut socket, _) =
            tokio_tungstenite::client_async(format!("{scheme}://{addr}/echo"), stream).await.expect("upgrade");
        socket.send(tokio_tungstenite::tungstenite::Message::text("hello")).await.expect("send");
        let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.expect("echo within patience");
        match echoed {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => assert_eq!(text.as_str(), "hello"),
            other => panic!("{scheme}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn half_a_header_is_cut_off_after_the_header_read_timeout() {
    let limits = ConnectionLimits { header_read_timeout: Duration::from_millis(200), ..Default::default() };
    for tls in [false, true] {
        let pki = pki();
        let server = start(tls.then_some(&pki.server), limits, Gate::default()).await;
        let config = client_config(pki.ca.cert_pem(), None).expect("client config");
        let mut stream = dial(tls, &server.addr.to_string(), "127.0.0.1", Some(config)).await.expect("dial");
        stream.write_all(b"GET /whoami HTTP/1.1\r\nHost: te").await.expect("half a header");
        let mut rest = Vec::new();
        // Returns only when the server closes the connection; without the timeout this would hang.
        let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "tls={tls}: the server kept a half-sent header open");
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("200 OK"), "tls={tls}: {rest}");
    }
}

#[tokio::test]
async fn a_silent_connection_is_cut_off_after_the_handshake_timeout() {
    let pki = pki();
    let limits = ConnectionLimits { handshake_timeout: Duration::from_millis(200), ..Default::default() };
    let server = start(Some(&pki.server), limits, Gate::default()).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut nothing = Vec::new();
    // Returns only when the server closes the connection (its default timeouts are far beyond PATIENCE).
    let closed = tokio::time::timeout(PATIENCE, silent.read_to_end(&mut nothing)).await;
    assert!(closed.is_ok(), "the server kept a silent connection open");
}

#[tokio::test]
async fn connections_beyond_the_per_ip_cap_are_closed_while_the_first_still_work() {
    let limits = ConnectionLimits { max_connections_per_ip: 2, ..Default::default() };
    let server = start(None, limits, Gate::default()).await;
    let mut first = TcpStream::connect(server.addr).await.expect("first");
    let mut second = TcpStream::connect(server.addr).await.expect("second");
    let mut third = TcpStream::connect(server.addr).await.expect("third (the kernel accepts it)");
    // The server closes the third at once: its request gets no answer (served, it would get a 200).
    let answer = get_text(&mut third, "/whoami").await.unwrap_or_default();
    assert!(answer.is_empty(), "the third connection was served: {answer}");

    for stream in [&mut first, &mut second] {
        let answer = get_text(stream, "/whoami").await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Their slots are given back once they end ("Connection: close"), so a new one is served.
    let answer = loop {
        let mut fourth = TcpStream::connect(server.addr).await.expect("fourth");
        let answer = get_text(&mut fourth, "/whoami").await.unwrap_or_default();
        if !answer.is_empty() {
            break answer;
        }
        tokio::task::yield_now().await; // the server may not have seen the first two close yet
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn graceful_shutdown_lets_the_request_in_flight_finish() {
    let gate = Gate::default();
    let mut server = start(None, ConnectionLimits::default(), gate.clone()).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("request");
    tokio::time::timeout(PATIENCE, gate.entered.notified()).await.expect("handler entered");

    server.stop.take().map(|stop| stop.send(()));
    // Once the listener is gone, serve() has left its accept loop and asked connections to stop.
    tokio::time::timeout(PATIENCE, async {
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener closed");
    assert!(!server.served.is_finished(), "serve() returned with a request still in flight");

    gate.release.notify_one();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await.expect("answer").expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("finished"), "{answer}");
    tokio::time::timeout(PATIENCE, &mut server.served).await.expect("serve returned").expect("join").expect("ok");
}
