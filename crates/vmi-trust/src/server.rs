//! The guarded door every service listens behind: TLS (with optional client certificates), plain
//! HTTP for loopback peers only, connection caps, a header-read timeout and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::TrustError;

/// The first byte of a TLS handshake record; anything else is taken for plain HTTP.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Who is on the other end of a request: added to every request's extensions, read in handlers
/// with `axum::Extension<Peer>`.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate chain, when the peer presented one (already verified against the CA).
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Peer {
    /// Whether the peer presented a CA-signed certificate naming `name` (e.g. `site-a.site.vmi`).
    pub fn is(&self, name: &str) -> bool {
        self.certs.as_ref().is_some_and(|certs| crate::peer_is(certs, name))
    }

    /// Whether the peer is on this machine (127.0.0.0/8, ::1, or IPv4-mapped loopback).
    pub fn is_loopback(&self) -> bool {
        is_loopback(self.addr.ip())
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Refuses to listen on a non-loopback address without TLS: plain HTTP is for this machine only.
pub fn check_listen(addr: SocketAddr, tls: bool) -> Result<(), TrustError> {
    if tls || is_loopback(addr.ip()) { Ok(()) } else { Err(TrustError::PlainListenNotLoopback { addr }) }
}

/// Caps and timeouts for [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once in total; more are closed on accept.
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are closed on accept.
    pub max_connections_per_ip: usize,
    /// How long a request's headers may take to arrive (slow-loris defence).
    pub header_read_timeout: Duration,
    /// How long a new connection may take to send its first byte and, for TLS, finish the handshake.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then shuts every connection down
/// gracefully (requests in flight finish) and returns once they have.
///
/// With `tls`, each connection's first byte decides: a TLS handshake is served as HTTPS/WSS (the
/// client certificate, if any, lands in [`Peer::certs`]); anything else is plain HTTP and served only
/// to loopback peers (the browser demo on this machine), closed for everyone else. Without `tls`,
/// everything is plain HTTP (use [`check_listen`] first so that means loopback only).
///
/// Upgraded connections (WebSockets) leave hyper once upgraded and are not waited for: their
/// handlers end them on the application's own shutdown signal.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let occupancy = Arc::new(Mutex::new(Occupancy::default()));
    // Every connection holds a receiver: `true` asks it to shut down, and the sender's `closed()`
    // tells when the last one has finished.
    let (stop, _) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Some(slot) = Slot::take(&occupancy, addr.ip(), &limits) else {
            tracing::debug!(%addr, "connection refused: too many connections");
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection { addr, router: router.clone(), limits, stop: stop.subscribe(), _slot: slot };
        tokio::spawn(connection.run(stream, acceptor.clone()));
    }
    drop(listener);
    stop.send_replace(true);
    stop.closed().await;
    Ok(())
}

/// Connections open now, in total and per IP.
#[derive(Default)]
struct Occupancy {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One connection's place in [`Occupancy`], given back when dropped (whatever way the connection ends).
struct Slot {
    occupancy: Arc<Mutex<Occupancy>>,
    ip: IpAddr,
}

impl Slot {
    fn take(occupancy: &Arc<Mutex<Occupancy>>, ip: IpAddr, limits: &ConnectionLimits) -> Option<Slot> {
        let mut o = occupancy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let from_ip = o.per_ip.get(&ip).copied().unwrap_or(0);
        if o.total >= limits.max_connections || from_ip >= limits.max_connections_per_ip {
            return None;
        }
        o.total += 1;
        o.per_ip.insert(ip, from_ip + 1);
        Some(Slot { occupancy: occupancy.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.occupancy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.per_ip.remove(&self.ip);
            }
        }
    }
}

struct Connection {
    addr: SocketAddr,
    router: axum::Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
    _slot: Slot,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, acceptor: Option<TlsAcceptor>) {
        let Some(acceptor) = acceptor else {
            let peer = Peer { addr: self.addr, tls: false, certs: None };
            return self.serve_http(stream, peer).await;
        };
        let mut stop = self.stop.clone();
        let opened = tokio::select! {
            opened = self.open(stream, acceptor) => opened,
            () = stop_requested(&mut stop) => return,
        };
        match opened {
            Some(Opened::Tls(tls, peer)) => self.serve_http(*tls, peer).await,
            Some(Opened::Plain(plain, peer)) => self.serve_http(plain, peer).await,
            None => {}
        }
    }

    /// Tells TLS from plain by the first byte and makes the handshake, within `handshake_timeout`.
    async fn open(&self, stream: TcpStream, acceptor: TlsAcceptor) -> Option<Opened> {
        let addr = self.addr;
        let timeout = self.limits.handshake_timeout;
        let mut first = [0u8; 1];
        match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
            Ok(Ok(1..)) => {}
            Ok(Ok(0)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "connection failed before its first byte");
                return None;
            }
            Err(_) => {
                tracing::debug!(%addr, "connection closed: nothing sent within the handshake timeout");
                return None;
            }
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            if is_loopback(addr.ip()) {
                return Some(Opened::Plain(stream, Peer { addr, tls: false, certs: None }));
            }
            tracing::info!(%addr, "connection closed: plain HTTP is served to loopback peers only");
            return None;
        }
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%addr, error = %e, "TLS handshake refused");
                return None;
            }
            Err(_) => {
                tracing::debug!(%addr, "connection closed: TLS handshake took too long");
                return None;
            }
        };
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
        Some(Opened::Tls(Box::new(tls), Peer { addr, tls: true, certs }))
    }

    async fn serve_http<I>(&mut self, io: I, peer: Peer)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            router.clone().call(request.map(axum::body::Body::new))
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        let addr = self.addr;
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = stop_requested(&mut self.stop) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%addr, error = %e, "connection ended with an error");
        }
    }
}

/// Completes when [`serve`] asks its connections to stop (or is gone). Returns nothing, so no
/// (non-`Send`) borrow of the watch value lives across the awaits that follow.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A connection past its first byte, ready for HTTP.
enum Opened {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Peer),
    Plain(TcpStream, Peer),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_listening_is_for_loopback_only() {
        // serve() itself cannot be shown a non-loopback client in a loopback-only test, so the
        // classification it relies on is tested here directly.
        let any: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        match check_listen(any, false) {
            Err(e @ TrustError::PlainListenNotLoopback { .. }) => {
                let message = e.to_string();
                assert!(message.contains("0.0.0.0:1") && message.contains("loopback"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(check_listen(any, true).is_ok());
        assert!(check_listen("127.0.0.1:1".parse().expect("addr"), false).is_ok());
        assert!(check_listen("127.8.0.1:1".parse().expect("addr"), false).is_ok());
        assert!(check_listen("[::1]:1".parse().expect("addr"), false).is_ok());
        assert!(check_listen("192.168.1.2:1".parse().expect("addr"), false).is_err());
        assert!(check_listen("[::]:1".parse().expect("addr"), false).is_err());
        assert!(is_loopback("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!is_loopback("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn slots_count_per_ip_and_in_total_and_come_back_when_dropped() {
        let occupancy = Arc::new(Mutex::new(Occupancy::default()));
        let limits = ConnectionLimits { max_connections: 3, max_connections_per_ip: 2, ..Default::default() };
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = Slot::take(&occupancy, a, &limits).expect("first from a");
        let a2 = Slot::take(&occupancy, a, &limits).expect("second from a");
        assert!(Slot::take(&occupancy, a, &limits).is_none(), "third from a is over the per-IP cap");
        let b1 = Slot::take(&occupancy, b, &limits).expect("first from b");
        assert!(Slot::take(&occupancy, b, &limits).is_none(), "over the total cap");
        drop(a1);
        assert!(Slot::take(&occupancy, b, &limits).is_some(), "a freed slot is usable again");
        drop((a2, b1));
        let o = occupancy.lock().expect("lock");
        assert_eq!(o.total, 0);
        assert!(o.per_ip.is_empty());
    }
}
