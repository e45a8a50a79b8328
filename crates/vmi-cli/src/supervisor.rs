//! `vmi up`'s supervisor: the services it started (control service, sites, proxies), each a `vmi` child process.
//! A service that dies is started again, on the same address, after a back-off that doubles while it keeps
//! dying; the others keep running. A service that stops answering its `GET /healthz` ([`MISSED_PROBES`] probes
//! in a row, one every [`PROBE_EVERY`], and nothing for [`HUNG_AFTER`] or as `vmi up --hung-after-secs` says) is hung: it is killed, and started again
//! the same way. `vmi up` waits for
//! each service's `GET /readyz` ([`Service::wait_ready`]) before it goes on. A stop signal stops them all, each
//! given time to save its phones.

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The first wait before restarting a service that died.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A service that ran this long before dying is restarted after [`FIRST_BACKOFF`] again.
pub const STEADY_AFTER: Duration = Duration::from_secs(60);
/// How long a service is given to stop (and save its phones) after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// How often each probed service is asked whether it answers.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one probe waits for the answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Probes in a row a service may miss before it counts as hung and is killed.
pub const MISSED_PROBES: u32 = 3;
/// How long a service must have answered nothing before it counts as hung, by default (`vmi up --hung-after-secs`):
/// far longer than a pause, a cut link or a stop that `vmi nemesis` and the failover tests inject on purpose, so
/// those stay what they are and do not become kills.
pub const HUNG_AFTER: Duration = Duration::from_secs(120);
/// How long `vmi up` waits for a service to say it is ready.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// One child service: how it was started, and the process running it now.
pub struct Service {
    /// Its name in messages (`control`, `site-a`, `site-a-proxy`).
    pub name: String,
    /// The URL it announced.
    pub url: String,
    args: Vec<String>,
    /// The network namespace it runs in (`vmi up --cluster`), if not this process's.
    netns: Option<String>,
    process: tokio::process::Child,
    started: Instant,
    backoff: Duration,
    /// How to ask it `GET /healthz` (the provider CA and the operator's token), if it is probed.
    probe: Option<vmi_control_api::Caller>,
    /// Probes missed in a row.
    missed: u32,
    /// When it last answered a probe (or was started).
    answered: Instant,
}

impl Service {
    /// Starts `vmi ARGS` and waits (a minute at most) until it announces where it listens. Its later restarts
    /// listen on that same address, so everyone who knows it finds it again.
    pub async fn start(name: &str, args: Vec<String>) -> Result<Service> {
        Service::start_in(name, None, args).await
    }

    /// As [`Service::start`], inside network namespace `netns` when given (a simulated machine of its own).
    pub async fn start_in(name: &str, netns: Option<&str>, args: Vec<String>) -> Result<Service> {
        let netns = netns.map(str::to_owned);
        let (process, url, listen) = spawn(name, netns.as_deref(), &args).await?;
        let args = pin_listen(args, listen.as_deref());
        Ok(Service {
            name: name.to_owned(),
            url,
            args,
            netns,
            process,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            probe: None,
            missed: 0,
            answered: Instant::now(),
        })
    }

    /// Probes the service's `GET /healthz` as `caller` from now on (a service that serves it: the control service,
    /// a site).
    pub fn probed(mut self, caller: vmi_control_api::Caller) -> Service {
        self.probe = Some(caller);
        self
    }

    /// Waits until the service's `GET /readyz` answers 200 (a site: its lease held; the control service: its store
    /// read), at most [`READY_WITHIN`]; the last answer says why not.
    pub async fn wait_ready(&self, caller: &vmi_control_api::Caller) -> Result<()> {
        let url = format!("{}/readyz", self.url);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let answer = tokio::time::timeout(PROBE_TIMEOUT, caller.get_bytes(&url)).await;
            let why = match answer {
                Ok(Ok((200, _))) => return Ok(()),
                Ok(Ok((status, body))) => format!("{status} {}", String::from_utf8_lossy(&body)),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer in time".to_owned(),
            };
            if Instant::now() >= deadline {
                anyhow::bail!("{} was not ready within {} s: {why}", self.name, READY_WITHIN.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The services of one `vmi up`.
pub struct Supervisor {
    services: Vec<Service>,
    /// How long a service may answer nothing before it is killed as hung.
    hung_after: Duration,
}

impl Supervisor {
    /// No services yet; one that answers no health check for `hung_after` is killed and started again.
    pub fn hung_after(hung_after: Duration) -> Supervisor {
        Supervisor { services: Vec::new(), hung_after }
    }

    /// Takes `service` under supervision.
    pub fn add(&mut self, service: Service) {
        self.services.push(service);
    }

    /// Keeps every service running until `stop` completes: one that exits is reported and started again after
    /// its back-off (the back-off doubles while it keeps dying, up to [`MAX_BACKOFF`], and starts over once it
    /// has run [`STEADY_AFTER`]).
    pub async fn run(&mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut probes = tokio::time::interval(PROBE_EVERY);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (i, status) = tokio::select! {
                () = &mut stop => return,
                exited = self.next_exit() => exited,
                _ = probes.tick() => {
                    self.probe_all().await;
                    continue;
                }
            };
            let service = &mut self.services[i];
            if service.started.elapsed() >= STEADY_AFTER {
                service.backoff = FIRST_BACKOFF;
            }
            let wait = service.backoff;
            service.backoff = (service.backoff * 2).min(MAX_BACKOFF);
            eprintln!("{} exited ({status}); starting it again in {:.1} s", service.name, wait.as_secs_f64());
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(wait) => {}
            }
            match spawn(&service.name, service.netns.as_deref(), &service.args).await {
                Ok((process, url, _)) => {
                    eprintln!("{} is running again at {url}", service.name);
                    service.process = process;
                    service.url = url;
                    service.started = Instant::now();
                    service.answered = Instant::now();
                    service.missed = 0;
                }
                // Still exited: the next round finds it at once and tries again, after a longer wait.
                Err(e) => eprintln!("{} did not start again: {e:#}", service.name),
            }
        }
    }

    /// Asks every probed service whether it answers; kills one that missed [`MISSED_PROBES`] in a row (it is then
    /// found exited and started again).
    async fn probe_all(&mut self) {
        // All at once: one hung service's timeout must not hold up the others' probes.
        let mut probes = tokio::task::JoinSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let Some(caller) = service.probe.clone() else { continue };
            let url = format!("{}/healthz", service.url);
            probes.spawn(async move {
                let answered = tokio::time::timeout(PROBE_TIMEOUT, caller.get_bytes(&url)).await;
                (i, matches!(answered, Ok(Ok((200, _)))))
            });
        }
        while let Some(Ok((i, answered))) = probes.join_next().await {
            let service = &mut self.services[i];
            if answered {
                service.missed = 0;
                service.answered = Instant::now();
                continue;
            }
            service.missed += 1;
            if service.missed >= MISSED_PROBES && service.answered.elapsed() >= self.hung_after {
                eprintln!(
                    "{} answered no health check for {} s: it is hung; killing it",
                    service.name,
                    service.answered.elapsed().as_secs()
                );
                service.missed = 0;
                let _ = service.process.start_kill();
            }
        }
    }

    /// The first service found exited, and how it ended.
    async fn next_exit(&mut self) -> (usize, String) {
        loop {
            for (i, service) in self.services.iter_mut().enumerate() {
                match service.process.try_wait() {
                    Ok(Some(status)) => return (i, status.to_string()),
                    Ok(None) => {}
                    Err(e) => return (i, format!("cannot be waited for: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGTERM to every service and waits (up to [`STOP_GRACE`] each) for it to save and exit; whether all
    /// of them exited cleanly (each failure is reported).
    pub async fn stop_all(&mut self) -> bool {
        for service in &self.services {
            if let Some(pid) = service.process.id() {
                // SAFETY: sending SIGTERM to our own child process by its pid.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let mut clean = true;
        for service in &mut self.services {
            match tokio::time::timeout(STOP_GRACE, service.process.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    eprintln!("{} exited with {status}", service.name);
                    clean = false;
                }
                _ => {
                    eprintln!("{} did not stop in time", service.name);
                    clean = false;
                }
            }
        }
        clean
    }
}

/// Starts `vmi ARGS` and reads its stdout until the `listening` event: the process, the URL it announced and the
/// address it listens on (`listen` in the event, if it says).
async fn spawn(
    name: &str,
    netns: Option<&str>,
    args: &[String],
) -> Result<(tokio::process::Child, String, Option<String>)> {
    let exe = std::env::current_exe().context("finding the vmi executable")?;
    // `ip netns exec` enters the namespace and then becomes the program (same pid), so signals reach it.
    let mut command = match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => tokio::process::Command::new(exe),
    };
    if let Some(path) = crate::credentials::chosen_credentials() {
        // The operator credential this process uses (vmi up's own): its children act with it too.
        command.env(crate::credentials::CREDENTIALS_ENV, path);
    }
    let mut process = command
        .args(crate::trace_args())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = process.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let announced = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["event"] == "listening"
            {
                let text = |key: &str| v[key].as_str().map(str::to_string);
                return Ok::<_, std::io::Error>(text("url").map(|url| (url, text("listen"))));
            }
        }
        Ok(None)
    })
    .await
    .with_context(|| format!("{name} did not start within 60 s"))??
    .with_context(|| format!("{name} exited before listening"))?;
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((process, announced.0, announced.1))
}

/// `args` with the value of `--listen` replaced by `listen` (where the first run did listen: a port 0 became a
/// real one).
fn pin_listen(mut args: Vec<String>, listen: Option<&str>) -> Vec<String> {
    if let Some(listen) = listen
        && let Some(i) = args.iter().position(|a| a == "--listen")
        && let Some(value) = args.get_mut(i + 1)
    {
        *value = listen.to_owned();
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_listens_where_the_first_run_did() {
        let args: Vec<String> = ["control", "--listen", "127.0.0.1:0", "--db", "x"].map(String::from).to_vec();
        let pinned = pin_listen(args.clone(), Some("127.0.0.1:40123"));
        assert_eq!(pinned[2], "127.0.0.1:40123");
        assert_eq!(pin_listen(args.clone(), None), args, "nothing said: nothing changed");
    }
}
