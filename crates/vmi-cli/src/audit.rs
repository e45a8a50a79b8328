//! `vmi audit`: the control service's audit log (every operator action and every refusal for security reasons),
//! filtered by user, site, principal and time.

use anyhow::{Context, Result};
use clap::Args;
use vmi_control_api::auth::{AuditEntry, AuditQuery, MAX_AUDIT_LISTED};

/// `vmi audit` arguments.
#[derive(Args)]
pub struct AuditArgs {
    /// Only entries naming this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only entries naming this site (or recorded there).
    #[arg(long)]
    pub site: Option<String>,
    /// Only entries by this principal, or principals starting with it: `operator:admin`, `device:`, `anonymous`.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only entries at or after TIME: an age (`1h`, `3d`), a date `YYYY-MM-DD[THH:MM]` (UTC) or ms.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only entries before TIME (as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Most entries, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    pub control: String,
}

/// Runs `vmi audit`.
pub async fn audit(args: AuditArgs) -> Result<()> {
    let query = query(&args, crate::checkpoints::now_ms())?;
    let entries =
        crate::credentials::control_client(&args.control)?.audit(&query).await.context("reading the audit log")?;
    // One object a line, as the log is kept: a program reads it as it comes.
    if crate::output::json() {
        for entry in &entries {
            println!("{}", serde_json::to_string(entry)?);
        }
    } else {
        print!("{}", table(&entries));
    }
    Ok(())
}

/// The query the arguments ask for, times relative to `now_ms`.
fn query(args: &AuditArgs, now_ms: u64) -> Result<AuditQuery> {
    if args.limit == 0 || args.limit > MAX_AUDIT_LISTED {
        anyhow::bail!("--limit {}: give 1 to {MAX_AUDIT_LISTED}", args.limit);
    }
    let time = |flag: &str, value: &Option<String>| -> Result<Option<u64>> {
        value
            .as_deref()
            .map(|v| crate::checkpoints::parse_time(v, now_ms).with_context(|| format!("--{flag}")))
            .transpose()
    };
    Ok(AuditQuery {
        user: args.user.clone(),
        site: args.site.clone(),
        principal: args.principal.clone(),
        since_ms: time("since", &args.since)?,
        until_ms: time("until", &args.until)?,
        limit: Some(args.limit),
    })
}

/// The entries as a table, newest first.
fn table(entries: &[AuditEntry]) -> String {
    let mut out = format!(
        "{:<20} {:<24} {:<6} {:<38} {:<10} {:<8} {}\n",
        "WHEN (UTC)", "WHO", "STATUS", "WHAT", "USER", "SITE", "FROM"
    );
    for e in entries {
        out.push_str(&format!(
            "{:<20} {:<24} {:<6} {:<38} {:<10} {:<8} {}\n",
            vmi_control_api::time::format_ms(e.at_ms),
            e.principal,
            e.status,
            e.action,
            e.user.as_deref().unwrap_or("-"),
            e.site.as_deref().unwrap_or("-"),
            e.from
        ));
    }
    if entries.is_empty() {
        out.push_str("(no entries match)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> AuditArgs {
        AuditArgs {
            user: None,
            site: None,
            principal: None,
            since: None,
            until: None,
            limit: 100,
            control: String::new(),
        }
    }

    #[test]
    fn filters_become_the_query() {
        let now = 1_800_000_000_000;
        let a = AuditArgs {
            user: Some("ann".into()),
            principal: Some("device:".into()),
            since: Some("1h".into()),
            until: Some("2030-01-01".into()),
            ..args()
        };
        let q = query(&a, now).expect("query");
        assert_eq!(q.user.as_deref(), Some("ann"));
        assert_eq!(q.principal.as_deref(), Some("device:"));
        assert_eq!(q.since_ms, Some(now - 3_600_000));
        assert!(q.until_ms.is_some_and(|t| t > now));
        assert!(query(&AuditArgs { limit: 0, ..args() }, now).is_err());
        let bad = query(&AuditArgs { since: Some("yesterday".into()), ..args() }, now).expect_err("bad time");
        assert!(format!("{bad:#}").contains("--since"), "{bad:#}");
    }

    #[test]
    fn the_table_has_one_line_per_entry() {
        let entry = AuditEntry {
            id: 1,
            at_ms: 0,
            principal: "anonymous".into(),
            action: "POST /v1/users/demo/devices".into(),
            user: Some("demo".into()),
            site: None,
            from: "127.0.0.1".into(),
            status: 401,
            detail: "refused".into(),
        };
        let text = table(&[entry]);
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("1970-01-01T00:00:00Z") && text.contains("401") && text.contains("demo"), "{text}");
        assert!(table(&[]).contains("no entries"));
    }
}
