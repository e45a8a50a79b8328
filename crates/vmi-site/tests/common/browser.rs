//! Browser tests' helpers: the repository's drivers (`tests/browser/NAME.mjs`, playwright-core and Debian's
//! Chromium) and the conversation with one while a test runs.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The repository, with Chromium and playwright-core checked for (scripts/setup installs them).
pub fn browser_repo() -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        repo.join("tests/browser/node_modules/playwright-core").exists() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and playwright-core: run ./scripts/setup first"
    );
    repo
}

/// A browser driver (`tests/browser/NAME.mjs`) the test talks to while it runs: it prints one JSON step per line
/// and waits for lines on stdin where the test must act (stop a site, migrate); killed if the test ends first.
pub struct Driver {
    name: String,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Driver {
    pub fn start(name: &str, args: &[&str], shots: &Path) -> Driver {
        Driver::start_with_env(name, args, &[], shots)
    }

    /// [`Driver::start`] with `env` added to the driver's environment (secrets such as tokens: never in argv).
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)], shots: &Path) -> Driver {
        let mut child = tokio::process::Command::new("node")
            .arg(browser_repo().join(format!("tests/browser/{name}.mjs")))
            .args(args)
            .envs(env.iter().copied())
            .arg("--screenshot-dir")
            .arg(shots)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run node");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Driver { name: name.to_owned(), child, stdin, lines, seen: Vec::new() }
    }

    /// The next step named `want`; if the driver ends first, its stderr in the panic.
    pub async fn step(&mut self, want: &str) -> serde_json::Value {
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(180), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{}.mjs: no step {want} within 3 minutes", self.name))
                .expect("read the driver's output");
            let Some(line) = line else {
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err).await;
                }
                panic!("{}.mjs ended before step {want}:\n{}\n{err}", self.name, self.seen.join("\n"));
            };
            self.seen.push(line.clone());
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["step"] == want
            {
                return v;
            }
        }
    }

    /// Tells the driver the test did what it waits for.
    pub async fn tell(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.expect("tell the driver");
    }

    /// Waits for the driver's `done` and its clean exit.
    pub async fn finish(mut self) {
        self.step("done").await;
        let status = self.child.wait().await.expect("driver");
        assert!(status.success(), "{}.mjs exited with {status}", self.name);
    }
}
