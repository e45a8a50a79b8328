//! The follow-me demo as a user runs it: `vmi up` puts a delay proxy in front of each site,
//! a headless terminal walks from site-a to site-c (`--route`), reporting where it is, and
//! the phone follows: the terminal is redirected to site-c's proxy, `vmi vm list` shows the
//! phone there, and the walk felt like distance on the way (the round trip to site-a grew
//! as the terminal walked away from it). The browser page's map reads the same through the
//! site's `/v1/demo/*` routes. Ctrl-C stops everything cleanly.

mod common;

use common::*;

#[test]
fn the_phone_follows_a_terminal_that_walks_to_another_site() {
    let data = scratch_dir("follow-me");
    let up = up(&data, &["--placer-dwell-ms", "2000"]);
    let (proxy_a, proxy_c) = (up.site("site-a").to_string(), up.site("site-c").to_string());
    let (control, url, token) = (up.control.clone(), up.terminal.clone(), up.token());
    assert_eq!(url, format!("{}/", proxy_a.replace("https://", "http://")), "the page is at site-a's proxy");

    // Control knows the sites by their proxies' URLs (the page asks as the demo device).
    let sites: serde_json::Value =
        serde_json::from_str(&fetch(&format!("{proxy_a}/v1/demo/sites"), Some(&token))).expect("json");
    let site_c = sites.as_array().expect("list").iter().find(|s| s["id"] == "site-c").expect("site-c");
    assert_eq!(site_c["url"], proxy_c.as_str());

    // Stand at site-a for 2 s, walk to site-c in 3 s, stay there.
    let route = data.join("a-to-c.route");
    std::fs::write(&route, "# site-a, then to site-c\n60.2055 24.6559 2\n60.2934 25.0378 3\n60.2934 25.0378 60\n")
        .expect("route");
    let out = vmi()
        .args(["terminal", "--headless", "--control", &control, "--ca", &up.ca_file])
        .args(["--token-file", &up.token_file, "--route"])
        .arg(&route)
        .args(["--duration", "14"])
        .output()
        .expect("terminal runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "terminal: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let redirect =
        events.iter().position(|e| e["event"] == "redirected").unwrap_or_else(|| panic!("no redirect in:\n{stdout}"));
    assert_eq!(events[redirect]["url"], format!("{}/v1/terminal", proxy_c.replace("https://", "wss://")));

    // Every second a position was reported, first near site-a, at last at site-c.
    let positions: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "position").collect();
    assert!(positions.len() >= 10, "{} positions in:\n{stdout}", positions.len());
    assert!(positions.iter().all(|p| p["reported"] == true), "{stdout}");
    assert_eq!((positions[0]["lat"].as_f64(), positions[0]["site"].as_str()), (Some(60.2055), Some("site-a")));
    let last = positions.last().expect("a position");
    assert_eq!((last["lat"].as_f64(), last["site"].as_str()), (Some(60.2934), Some("site-c")));

    // The distance was felt: standing at site-c (23 km away, 2 + 23 ms at the demo's slope)
    // while still connected to site-a, the round trip was well above the few ms near it.
    let far: Vec<f64> = events[..redirect]
        .iter()
        .filter(|e| e["event"] == "position" && e["lat"].as_f64() == Some(60.2934))
        .filter_map(|e| e["rtt_ms"].as_f64())
        .collect();
    assert!(far.iter().any(|&ms| ms >= 20.0), "round trips to site-a from site-c: {far:?}\n{stdout}");

    // The phone runs on site-c now, and the migration is in the log the map shows.
    let list = up.vmi().args(["vm", "list", "--json", "--control", &control]).output().expect("vm list");
    assert!(list.status.success());
    let phones: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let demo = phones.as_array().expect("list").iter().find(|p| p["user"] == "demo").expect("demo's phone");
    assert_eq!(demo["site"], "site-c", "{phones}");
    let moves: serde_json::Value =
        serde_json::from_str(&fetch(&format!("{proxy_a}/v1/demo/migrations?user=demo"), Some(&token))).expect("json");
    let newest = &moves[0];
    assert_eq!(
        (&newest["from"], &newest["to"], &newest["outcome"]),
        (&"site-a".into(), &"site-c".into(), &"committed".into())
    );
    let me: serde_json::Value =
        serde_json::from_str(&fetch(&format!("{proxy_c}/v1/demo/me"), Some(&token))).expect("json");
    assert_eq!((&me["user"], &me["site"]), (&"demo".into(), &"site-c".into()));

    up.interrupt();
    assert!(data.join("site-c/phones/demo/phone.state").exists(), "the phone was saved on site-c");
    let _ = std::fs::remove_dir_all(&data);
}
