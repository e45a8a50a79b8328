//! `vmi up` as a user runs it: control service and three sites as separate processes,
//! a demo phone reachable from a terminal, mail delivered by `vmi mail send`, and Ctrl-C
//! stopping everything with the phone saved, so the next `vmi up` has the same notes.

mod common;

use common::*;

#[test]
fn up_serves_a_phone_and_ctrl_c_saves_it() {
    let data = scratch_dir("up");
    let first = up(&data, &[]);
    let (control, url) = (first.control.clone(), first.terminal.clone());
    // The page at site-a's address, plain on loopback; the token only in the 0600 link file, in its fragment.
    assert_eq!(url, format!("{}/", first.site("site-a").replace("https://", "http://")));
    assert!(!url.contains("token"), "{url}");
    let link = std::fs::read_to_string(&first.link_file).expect("link file");
    assert_eq!(link.trim(), format!("{url}#token={}", first.token()));
    use std::os::unix::fs::PermissionsExt;
    for secret in [&first.link_file, &first.token_file, &first.credentials] {
        let mode = std::fs::metadata(secret).expect("secret file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }
    let operator = first.operator_token();
    // The operator dashboard's page, as the banner names it (plain HTTP from this machine).
    let page = fetch(&format!("{}/dashboard", control.replacen("https://", "http://", 1)), None);
    assert!(page.contains("<title>Seed VMI · operator dashboard</title>"), "{page}");

    // A native terminal types a note.
    let script = data.join("type.script");
    let shot = data.join("t.png");
    std::fs::write(&script, format!("tap 274 1090\ntype Written before Ctrl-C\nscreenshot {}\n", shot.display()))
        .expect("script");
    // Plays `script` in a headless native terminal.
    let play = |script: &std::path::Path| {
        let out = vmi()
            .args(["terminal", "--headless", "--control", &control, "--ca", &first.ca_file])
            .args(["--token-file", &first.token_file, "--script"])
            .arg(script)
            .output()
            .expect("terminal runs");
        assert!(out.status.success(), "terminal: {}", String::from_utf8_lossy(&out.stderr));
    };
    play(&script);
    assert!(shot.exists());

    // Mail reaches the phone.
    let out = first
        .vmi()
        .args(["mail", "send", "--control", &control, "--to", "demo", "--subject", "Hi", "--body", "there"])
        .output()
        .expect("mail");
    assert!(out.status.success(), "mail: {}", String::from_utf8_lossy(&out.stderr));

    // A checkpoint on demand, copied to a second site; more typing; back to the checkpoint.
    let cli = |args: &[&str]| {
        let out = first.vmi().args(args).args(["--control", &control]).output().expect("vmi runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, created) = cli(&["vm", "checkpoints", "create", "demo", "--label", "typed"]);
    assert!(ok && created.contains("copied to site-"), "{created}");
    let id = created.split_whitespace().nth(1).expect("id").to_string();
    std::fs::write(&script, "type , and more\n").expect("script");
    play(&script);
    let site_url = first.site("site-a").to_string();
    let notes = |site: &str| fetch(&format!("{site}/v1/phones/demo/kv/notes.text"), Some(&operator));
    assert_eq!(notes(&site_url), "Written before Ctrl-C, and more");
    let (ok, listed) = cli(&["vm", "checkpoints", "list", "demo"]);
    assert!(ok && listed.contains("typed") && listed.contains(&id[..16]), "{listed}");
    let (ok, e) = cli(&["vm", "checkpoints", "restore", "demo", "--at", "yesterday"]);
    assert!(!ok && e.contains("use latest, an age like 3d"), "{e}");
    // By the 16 digits `list` shows.
    let (ok, restored) = cli(&["vm", "checkpoints", "restore", "demo", "--id", &id[..16]]);
    assert!(ok && restored.contains("undoes this"), "{restored}");
    assert!(!restored.contains('\r'), "no progress line when stderr is not a terminal: {restored:?}");
    assert_eq!(notes(&site_url), "Written before Ctrl-C");

    first.interrupt();
    assert!(data.join("site-a/phones/demo/phone.state").exists(), "the phone was saved on Ctrl-C");
    // Phone data is the owner's alone.
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("site-a/phones/demo/phone.state")), 0o600);
    assert_eq!(mode(&data.join("site-a/phones/demo")), 0o700);
    assert_eq!(mode(&data.join("site-a")), 0o700);

    // The next `vmi up` brings the same phone back (this time telling a program where everything is).
    let second = up(&data, &["--json"]);
    let site = second.site("site-a").to_string();
    assert_eq!(notes(&site), "Written before Ctrl-C", "the operator credential of the first run still works");
    second.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
