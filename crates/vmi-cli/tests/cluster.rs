//! `vmi up --cluster`: 3 etcd members, 2 control replicas and 3 sites, each in a network namespace of its own with
//! a link to a shared bridge. A terminal in the host's namespace types into the demo phone across those links; the
//! link of the site running it is taken down (a real partition: the site runs on, cut off) and the phone fails over
//! to its standby copy with every typed character; an etcd member cut off from the others changes nothing the
//! terminal sees; the cut-off site, linked again, drops its copy. The etcd members speak only mutual TLS: a client
//! without a certificate from the provider CA, or in plain text, is refused.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn link(name: &str, up: bool) {
    let state = if up { "up" } else { "down" };
    let done = std::process::Command::new("ip").args(["link", "set", name, state]).status().expect("ip runs");
    assert!(done.success(), "ip link set {name} {state}");
}

/// The host end of machine `name`'s link.
fn link_of(up: &Up, name: &str) -> String {
    up.machines().into_iter().find(|(n, _)| n == name).map(|(_, l)| l).unwrap_or_else(|| panic!("no machine {name}"))
}

/// Brings a link up again when dropped, so a failing test leaves no machine cut off.
struct Cut(String);

impl Drop for Cut {
    fn drop(&mut self) {
        link(&self.0, true);
    }
}

#[test]
fn a_site_cut_off_by_its_link_fails_over_and_the_terminal_across_the_bridge_loses_no_key() {
    assert!(vmi_cluster::Net::available(), "vmi up --cluster needs root (network namespaces): run the tests as root");
    let data = scratch_dir("cluster");
    let up = up(&data, &["--cluster"]);
    assert_eq!((up.controls.len(), up.sites.len(), up.machines().len()), (2, 3, 8));
    assert!(up.sites.iter().all(|(_, url)| url.starts_with("https://10.")), "sites on their own addresses");
    let (owner, epoch) = placement(&up);
    let others = sites_but(&up, &owner);
    wait_for_standby(&up, &others);
    etcd_speaks_only_mutual_tls(&data);

    let (mut terminal, text) = typing_terminal(&up, &data);
    std::thread::sleep(Duration::from_secs(2));
    // One etcd member cut off from the two others: they keep the quorum; nobody notices.
    let etcd_0 = link_of(&up, "etcd-0");
    let cut_etcd = Cut(etcd_0.clone());
    link(&etcd_0, false);
    std::thread::sleep(Duration::from_secs(1));
    // The owner's link down: it cannot reach the control plane, the other sites or its terminal.
    let owner_link = link_of(&up, &owner);
    let cut = Cut(owner_link.clone());
    link(&owner_link, false);
    let now_at = wait_for_failover(&up, &owner, epoch, &others, Instant::now(), "link cut");
    let status = terminal.child().wait().expect("terminal ends");
    assert!(status.success(), "the terminal ended with {status}");
    let notes = |site: &str| up.get(&format!("{}/v1/phones/demo/kv/notes.text", up.site(site)));
    assert_eq!(notes(&now_at).as_deref(), Ok(text.as_str()), "every typed character once and in order");

    // Linked again: the old owner hears that the phone is placed elsewhere and drops its copy.
    drop(cut);
    drop(cut_etcd);
    let owner_url = up.site(&owner).to_string();
    wait_until(Duration::from_secs(30), "the old owner dropping its copy", || {
        up.get(&format!("{owner_url}/v1/phones")).is_ok_and(|list| !list.contains("\"user\":\"demo\""))
    });
    assert_eq!(notes(&now_at).as_deref(), Ok(text.as_str()));
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}

/// Between machines etcd speaks TLS, and only to clients with a certificate from the provider CA.
fn etcd_speaks_only_mutual_tls(data: &std::path::Path) {
    let up: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("up.json")).expect("up.json")).expect("JSON");
    let endpoints: Vec<&str> =
        up["etcd"].as_array().expect("etcd endpoints").iter().filter_map(|e| e.as_str()).collect();
    assert!(!endpoints.is_empty() && endpoints.iter().all(|e| e.starts_with("https://10.")), "{endpoints:?}");
    let etcdctl = |endpoint: &str, args: &[&str]| {
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "--dial-timeout", "2s", "--command-timeout", "3s"])
            .args(args)
            .args(["endpoint", "health"])
            .output()
            .expect("etcdctl runs (scripts/setup installs it)")
    };
    let ca = data.join("pki/ca.pem").display().to_string();
    // A certificate the provider CA issued (the member's own; it is good for clients too).
    let (cert, key) = (data.join("etcd/tls-0/cert.pem"), data.join("etcd/tls-0/key.pem"));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let with_cert = etcdctl(endpoints[0], &["--cacert", &ca, "--cert", &cert, "--key", &key]);
    assert!(
        with_cert.status.success(),
        "a client with a provider certificate: {}",
        String::from_utf8_lossy(&with_cert.stderr)
    );
    let without_cert = etcdctl(endpoints[0], &["--cacert", &ca]);
    assert!(!without_cert.status.success(), "a TLS client without a certificate is refused");
    let plain = endpoints[0].replace("https://", "http://");
    assert!(!etcdctl(&plain, &[]).status.success(), "a plain-text client is refused");
}
