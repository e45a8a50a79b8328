//! `vmi vm checkpoints list|create|restore`: a phone's checkpoints, through the site that
//! runs it (or, after a site is lost, the site holding the copy).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vmi_control_api::ControlClient;

use crate::services::site_url;

/// What to do with a phone's checkpoints.
#[derive(clap::Subcommand)]
pub enum CheckpointsCmd {
    /// List a phone's checkpoints: the control service's catalogue (every copy, with the
    /// sites holding it), or one site's store with `--site`.
    List {
        /// The phone's user.
        user: String,
        /// Ask this site instead (a site holding copies).
        #[arg(long)]
        site: Option<String>,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
    /// Checkpoint a phone now.
    Create {
        /// The phone's user.
        user: String,
        /// A label to find it by.
        #[arg(long)]
        label: Option<String>,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
    /// Bring a phone back to a checkpoint (its current state is checkpointed first).
    Restore {
        /// The phone's user.
        user: String,
        /// The latest checkpoint at or before TIME: `latest`, an age (`3d`, `12h`, `30m`
        /// ago), a UTC date and time (`2026-11-22T10:00`, `2026-11-22`), or ms since the
        /// Unix epoch.
        #[arg(long, conflicts_with = "id")]
        at: Option<String>,
        /// A checkpoint id (from `list`).
        #[arg(long)]
        id: Option<String>,
        /// Bring the phone up on this site from its copy there: only when the site that
        /// ran it is down (lost).
        #[arg(long)]
        site: Option<String>,
        /// Control service URL.
        #[arg(long, default_value = "http://127.0.0.1:7800")]
        control: String,
    },
}

/// Runs a checkpoints command.
pub async fn run(cmd: CheckpointsCmd) -> Result<()> {
    match cmd {
        CheckpointsCmd::List { user, site, control } => {
            let control = crate::credentials::control_client(&control)?;
            // One site's own store, or the control service's catalogue of every copy.
            let (title, list): (String, Vec<Value>) = match site {
                Some(site) => {
                    let url = site_url(&control, &site).await?;
                    let (status, body) = crate::credentials::operator_caller()?
                        .get_bytes(&format!("{url}/v1/phones/{user}/checkpoints"))
                        .await
                        .context("asking the site")?;
                    let v = answer(status, &body)?;
                    (format!("on {site}"), v["checkpoints"].as_array().cloned().unwrap_or_default())
                }
                None => {
                    let list =
                        control.checkpoints(&user).await.with_context(|| format!("listing {user}'s checkpoints"))?;
                    ("(all sites)".into(), list.iter().map(|c| serde_json::to_value(c).unwrap_or_default()).collect())
                }
            };
            if crate::output::json() {
                println!("{}", Value::Array(list));
                return Ok(());
            }
            let n = list.len();
            println!("{n} checkpoint{} of {user} {title}", if n == 1 { "" } else { "s" });
            println!("{:<20} {:<16} {:>10}  {:<18} LABEL", "TAKEN", "ID", "STORED", "SITES");
            for c in list {
                let id = c["id"].as_str().unwrap_or("");
                let sites: Vec<&str> = c["sites"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "{:<20} {:<16} {:>10}  {:<18} {}",
                    vmi_control_api::time::describe_time(c["at_ms"].as_u64().unwrap_or(0)),
                    &id[..16.min(id.len())],
                    c["stored_bytes"],
                    if sites.is_empty() { "-".to_owned() } else { sites.join(",") },
                    c["label"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        CheckpointsCmd::Create { user, label, control } => {
            let control = crate::credentials::control_client(&control)?;
            let (site, url) = phone_site(&control, &user).await?;
            let (status, text) = crate::credentials::operator_caller()?
                .post_json(&format!("{url}/v1/phones/{user}/checkpoints"), &json!({ "label": label }))
                .await
                .context("asking the site")?;
            let v = answer(status, text.as_bytes())?;
            let c = &v["checkpoint"];
            let copy = match v["replica"].as_str() {
                Some(replica) => format!("copied to {replica}"),
                None => format!("NOT copied to a second site: {}", v["replica_error"].as_str().unwrap_or("?")),
            };
            crate::output::emit(&v, || {
                println!(
                    "checkpoint {} of {user} on {site}: {} bytes stored, {copy}",
                    c["id"].as_str().unwrap_or("?"),
                    c["stored_bytes"]
                );
            })
        }
        CheckpointsCmd::Restore { user, at, id, site, control } => {
            let control = crate::credentials::control_client(&control)?;
            let at_ms = at.as_deref().map(|at| parse_time(at, now_ms())).transpose()?;
            let body = match (&id, at_ms) {
                (Some(id), _) => json!({ "id": full_id(&control, &user, site.as_deref(), id).await? }),
                (None, Some(at_ms)) => json!({ "at_ms": at_ms }),
                (None, None) => bail!("say which checkpoint: --at TIME or --id ID"),
            };
            let (site, url) = match site {
                None => phone_site(&control, &user).await?,
                Some(to) => (to.clone(), recover_on(&control, &user, &to).await?),
            };
            // The site checkpoints the phone as it is, then brings the checkpoint (from its store, or another
            // site's) back: seconds for a large phone.
            let progress = crate::output::progress();
            let (caller, restore_url) =
                (crate::credentials::operator_caller()?, format!("{url}/v1/phones/{user}/checkpoints/restore"));
            let asked = caller.post_json(&restore_url, &body);
            let (status, text) = progress
                .while_waiting(&format!("{site} restores {user}'s phone"), asked)
                .await
                .context("asking the site")?;
            progress.clear();
            if let (404, Some(at_ms)) = (status, at_ms) {
                let oldest = control.checkpoints(&user).await.ok().and_then(|l| l.first().map(|c| c.entry.at_ms));
                match oldest {
                    Some(oldest) => bail!(
                        "no checkpoint of {user} at or before {}: the oldest is from {}",
                        vmi_control_api::time::describe_time(at_ms),
                        vmi_control_api::time::describe_time(oldest)
                    ),
                    None => bail!("{user} has no checkpoint yet"),
                }
            }
            let v = answer(status, text.as_bytes())?;
            crate::output::emit(&v, || {
                let r = &v["restored"];
                println!(
                    "{user}'s phone is back to {} (checkpoint {}{})",
                    vmi_control_api::time::describe_time(r["at_ms"].as_u64().unwrap_or(0)),
                    r["id"].as_str().unwrap_or("?"),
                    r["label"].as_str().map(|l| format!(", {l}")).unwrap_or_default()
                );
                if let Some(before) = v["saved_before"]["id"].as_str() {
                    println!(
                        "the state it left is checkpoint {before}: `vmi vm checkpoints restore {user} --id {before}` undoes this"
                    );
                }
            })
        }
    }
}

/// The full id of the checkpoint whose id starts with `prefix` (at least 8 hex digits, as
/// `list` shows 16).
async fn full_id(control: &ControlClient, user: &str, site: Option<&str>, prefix: &str) -> Result<String> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() == 64 {
        return Ok(prefix);
    }
    if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("checkpoint id {prefix:?}: give at least 8 hex digits of an id from `vmi vm checkpoints list {user}`");
    }
    let ids: Vec<String> = match site {
        Some(site) => {
            let url = site_url(control, site).await?;
            let (status, body) = crate::credentials::operator_caller()?
                .get_bytes(&format!("{url}/v1/phones/{user}/checkpoints"))
                .await?;
            let v = answer(status, &body)?;
            v["checkpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect()
        }
        None => control
            .checkpoints(user)
            .await
            .with_context(|| format!("listing {user}'s checkpoints"))?
            .into_iter()
            .map(|c| c.entry.id)
            .collect(),
    };
    let matching: Vec<&String> = ids.iter().filter(|id| id.starts_with(&prefix)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("{user} has no checkpoint whose id starts with {prefix}"),
        _ => bail!("{} checkpoints of {user} start with {prefix}: give more digits", matching.len()),
    }
}

/// The site running `user`'s phone: id and URL.
async fn phone_site(control: &ControlClient, user: &str) -> Result<(String, String)> {
    let placement = control.placement(user).await.with_context(|| format!("finding {user}'s phone"))?;
    Ok((placement.site, placement.site_url))
}

/// Moves `user`'s placement to `to` for a restore from the copy there — only when the
/// site that runs the phone is down, so there is never a second live copy.
async fn recover_on(control: &ControlClient, user: &str, to: &str) -> Result<String> {
    let sites = control.list_sites().await.context("listing sites")?;
    let target = sites.iter().find(|s| s.site.id == to).with_context(|| format!("no site {to} is registered"))?;
    if let Ok(placement) = control.placement(user).await
        && placement.site != to
    {
        if let Some(owner) = sites.iter().find(|s| s.site.id == placement.site)
            && owner.healthy
        {
            bail!(
                "{user}'s phone runs on {}, which is up: restore it there (without --site), or `vmi vm migrate {user} --to {to}` first",
                placement.site
            );
        }
        control.set_placement(user, to).await.with_context(|| format!("placing {user}'s phone on {to}"))?;
    }
    Ok(target.site.url.clone())
}

fn answer(status: u16, body: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(body) }));
    if status != 200 {
        bail!("{} ({status})", v["error"].as_str().unwrap_or("the site refused"));
    }
    Ok(v)
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Parses a `--at` time (see `restore --at`) into ms since the epoch.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64> {
    let s = s.trim();
    if s == "latest" || s == "now" {
        return Ok(u64::MAX);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && s.len() >= 10 {
        return s.parse().with_context(|| format!("time {s:?} is not a number of ms"));
    }
    if s.bytes().next().is_some_and(|b| b.is_ascii_digit()) && !s.contains('-') {
        let age = crate::script::parse_duration(s.strip_suffix(" ago").unwrap_or(s))?;
        return Ok(now_ms.saturating_sub(age.as_millis() as u64));
    }
    let s = s.trim_end_matches('Z').trim_end_matches(" UTC");
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "23"));
    let bad = || anyhow::anyhow!("time {s:?}: use latest, an age like 3d, YYYY-MM-DD[THH:MM[:SS]] (UTC) or ms");
    let mut d = date.split('-').map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (y, m, day) = (d.next().ok_or_else(bad)??, d.next().ok_or_else(bad)??, d.next().ok_or_else(bad)??);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let mut t = time.split(':').map(|p| p.parse::<i64>().map_err(|_| bad()));
    let hh = t.next().ok_or_else(bad)??;
    let mm = t.next().transpose()?;
    let ss = t.next().transpose()?;
    // A time means all of it: 14:39 is up to 14:39:59.999, as a date is up to its end.
    let (mm, ss, rest_ms) = match (mm, ss) {
        (None, _) => (59, 59, 999),
        (Some(mm), None) => (mm, 59, 999),
        (Some(mm), Some(ss)) => (mm, ss, 999),
    };
    if t.next().is_some() || !(0..24).contains(&hh) || !(0..60).contains(&mm) || !(0..61).contains(&ss) {
        return Err(bad());
    }
    let days = vmi_control_api::time::days_from_civil(y, m, day);
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).map(|s| s * 1000 + rest_ms).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form_and_refuse_the_rest() {
        let now = 1_795_044_600_000;
        assert_eq!(parse_time("latest", now).expect("latest"), u64::MAX);
        assert_eq!(parse_time("3d", now).expect("age"), now - 3 * 86_400_000);
        assert_eq!(parse_time("12h ago", now).expect("age"), now - 12 * 3_600_000);
        assert_eq!(parse_time("1795044600000", now).expect("ms"), now);
        assert_eq!(parse_time("2026-11-18T23:30", now).expect("date"), now + 59_999);
        assert_eq!(parse_time("2026-11-18 23:30:00Z", now).expect("date"), now + 999);
        assert_eq!(parse_time("2026-11-18T23", now).expect("hour"), now + 1_799_999);
        assert_eq!(parse_time("1970-01-01", now).expect("date"), 86_399_999);
        for bad in ["yesterday", "2026-13-01", "2026-11-18T25:00", "2026-11", "3x", ""] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
    }
}
