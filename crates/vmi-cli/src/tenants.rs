//! `vmi tenant …`, `vmi user create`, `vmi image publish|list|rollback`, `vmi vm create|restart`:
//! tenants with quotas and managed image versions, at the control service.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use vmi_control_api::{ControlClient, Tenant, TenantRequest, TenantUpdate, format_bytes};
use vmi_engine::Engine;

const CONTROL: &str = "http://127.0.0.1:7800";

/// `vmi tenant …`.
#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant with quotas (none given: unlimited).
    Create {
        /// The tenant's name.
        name: String,
        /// Most phones its users run at once.
        #[arg(long)]
        max_phones: Option<u32>,
        /// Most memory its phones use together, e.g. 256MiB or 1GiB (each phone counts its memory cap).
        #[arg(long, value_parser = parse_size)]
        max_memory: Option<u64>,
        /// The image its phones run.
        #[arg(long, default_value = vmi_control_api::DEFAULT_IMAGE)]
        image: String,
        /// Control service URL.
        #[arg(long, default_value = CONTROL)]
        control: String,
    },
    /// Change a tenant's quotas or image; what is not given stays as it is.
    Set {
        /// The tenant.
        name: String,
        /// Most phones at once, or "unlimited".
        #[arg(long, value_parser = parse_count)]
        max_phones: Option<Limit<u32>>,
        /// Most memory together (e.g. 256MiB), or "unlimited".
        #[arg(long, value_parser = parse_memory)]
        max_memory: Option<Limit<u64>>,
        /// The image its phones run (from their next restart).
        #[arg(long)]
        image: Option<String>,
        /// Control service URL.
        #[arg(long, default_value = CONTROL)]
        control: String,
    },
    /// Every tenant with its quotas and what it uses.
    List {
        /// Control service URL.
        #[arg(long, default_value = CONTROL)]
        control: String,
    },
}

/// A quota as given on the command line: a number or "unlimited".
#[derive(Clone, Copy, Debug)]
pub enum Limit<T> {
    /// At most this much.
    At(T),
    /// No quota.
    Unlimited,
}

impl<T> Limit<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Limit::At(v) => Some(v),
            Limit::Unlimited => None,
        }
    }
}

/// `vmi image publish` arguments.
#[derive(Args)]
pub struct PublishArgs {
    /// Image name, e.g. "phone" (what tenants name).
    name: String,
    /// The image to publish as the next version: a .wasm phone, or a Linux image (`vmi image build --linux`).
    #[arg(required_unless_present = "built_in", conflicts_with = "built_in")]
    file: Option<PathBuf>,
    /// Publish the phone built into this `vmi` instead of a file.
    #[arg(long)]
    built_in: bool,
    /// Control service URL.
    #[arg(long, default_value = CONTROL)]
    control: String,
}

/// `vmi image list` / `vmi image rollback` arguments.
#[derive(Args)]
pub struct ImageNameArgs {
    /// Image name.
    name: String,
    /// Control service URL.
    #[arg(long, default_value = CONTROL)]
    control: String,
}

/// Just the control service's URL.
#[derive(Args)]
pub struct ControlArg {
    /// Control service URL.
    #[arg(long, default_value = CONTROL)]
    control: String,
}

/// `vmi vm create` / `vmi vm restart` arguments.
#[derive(Args)]
pub struct PhoneArgs {
    /// Whose phone.
    user: String,
    /// Where to boot a new phone (create only; default: where the user is placed).
    #[arg(long)]
    site: Option<String>,
    /// Control service URL.
    #[arg(long, default_value = CONTROL)]
    control: String,
}

fn client(url: &str) -> Result<ControlClient> {
    crate::credentials::control_client(url).with_context(|| format!("control service URL {url}"))
}

fn quota<T: std::fmt::Display>(limit: Option<T>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |v| v.to_string())
}

/// "at most 2 phones" / "any number of phones".
fn limit_phrase<T: std::fmt::Display>(limit: Option<T>, what: &str) -> String {
    limit.map_or_else(|| format!("no limit on {what}"), |v| format!("at most {v} {what}"))
}

/// A memory quota must hold at least one phone: a bare number is bytes, which is almost
/// certainly not what was meant below a mebibyte.
fn check_memory_quota(bytes: Option<u64>) -> Result<()> {
    if let Some(b) = bytes
        && b < 1 << 20
    {
        bail!("a memory quota of {b} bytes cannot hold a phone (a size needs its unit: did you mean {b}MiB?)");
    }
    Ok(())
}

/// Prints a tenant's quotas and image (the tenant as the API answered, with `--json`), and whether that image is
/// published.
async fn describe(control: &ControlClient, t: &Tenant) -> Result<()> {
    crate::output::emit(t, || {
        println!(
            "tenant {}: {}, {}, image {}",
            t.name,
            limit_phrase(t.max_phones, "phones"),
            limit_phrase(t.max_memory_bytes.map(format_bytes), "memory"),
            t.image
        );
    })?;
    note_unpublished(control, &t.image).await;
    Ok(())
}

/// Says so when no version of `image` is published: its phones run the built-in phone.
async fn note_unpublished(control: &ControlClient, image: &str) {
    if let Ok(versions) = control.list_images().await
        && !versions.iter().any(|v| v.name == image && !v.withdrawn)
    {
        eprintln!(
            "note: no version of image {image:?} is published yet; until one is (`vmi image publish {image} …`), \
             its phones run the built-in phone"
        );
    }
}

/// Runs `vmi tenant …`.
pub async fn tenant(cmd: TenantCmd) -> Result<()> {
    match cmd {
        TenantCmd::Create { name, max_phones, max_memory, image, control } => {
            check_memory_quota(max_memory)?;
            let req = TenantRequest { name, max_phones, max_memory_bytes: max_memory, image: Some(image) };
            let control = client(&control)?;
            let t = control.create_tenant(&req).await.context("creating the tenant")?;
            describe(&control, &t).await?;
        }
        TenantCmd::Set { name, max_phones, max_memory, image, control } => {
            let update = TenantUpdate {
                max_phones: max_phones.map(Limit::into_option),
                max_memory_bytes: max_memory.map(Limit::into_option),
                image,
            };
            check_memory_quota(update.max_memory_bytes.flatten())?;
            let control = client(&control)?;
            let t = control.update_tenant(&name, &update).await.context("updating the tenant")?;
            describe(&control, &t).await?;
        }
        TenantCmd::List { control } => {
            let tenants = client(&control)?.list_tenants().await.context("listing tenants")?;
            crate::output::emit(&tenants, || {
                println!("{:<16} {:<14} {:<22} IMAGE", "TENANT", "PHONES", "MEMORY");
                for t in &tenants {
                    let phones = format!("{}/{}", t.phones, quota(t.tenant.max_phones));
                    let memory = format!(
                        "{}/{}",
                        format_bytes(t.memory_bytes),
                        quota(t.tenant.max_memory_bytes.map(format_bytes))
                    );
                    println!("{:<16} {:<14} {:<22} {}", t.tenant.name, phones, memory, t.tenant.image);
                }
            })?;
        }
    }
    Ok(())
}

/// `vmi user create NAME [--tenant T]`.
pub async fn create_user(name: &str, tenant: Option<&str>, control: &str) -> Result<()> {
    let user = client(control)?.create_user_in(name, tenant).await.context("creating the user")?;
    crate::output::emit(&user, || match &user.tenant {
        Some(t) => println!("user {} created in tenant {t}", user.name),
        None => println!("user {} created (no tenant: no quotas)", user.name),
    })
}

/// `vmi image publish`: checks the image against the guest ABI here, then publishes it (the upload shown on a
/// terminal).
pub async fn publish(args: PublishArgs) -> Result<()> {
    let progress = crate::output::progress();
    let wasm = match &args.file {
        Some(path) => {
            progress.step(format!("reading {}", path.display()));
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => vmi_phone_image::PHONE_WASM.to_vec(),
    };
    progress.step("checking the image");
    if vmi_qemu_engine::image::is_linux_image(&wasm) {
        vmi_qemu_engine::image::parse(&wasm).context("not a valid Linux phone image")?;
    } else {
        let engine = vmi_wasm_engine::WasmEngine::new()?;
        engine.load_image(&wasm).context("not a valid phone image")?;
    }
    let mut control = client(&args.control)?;
    if let Some(observer) = progress.transfer(&format!("publishing {}", args.name), "") {
        control = control.with_observer(observer);
    }
    let v = control.publish_image(&args.name, &wasm).await.context("publishing")?;
    progress.clear();
    crate::output::emit(&v, || {
        println!(
            "{} version {} ({}, {} bytes): phones move to it on their next restart",
            v.name, v.version, v.hash, v.size_bytes
        );
    })
}

/// `vmi image list`.
pub async fn list(args: ControlArg) -> Result<()> {
    let versions = client(&args.control)?.list_images().await.context("listing images")?;
    crate::output::emit(&versions, || {
        println!("{:<16} {:<8} {:<10} {:<12} HASH", "IMAGE", "VERSION", "BYTES", "STATE");
        for v in &versions {
            let state = if v.current {
                "current"
            } else if v.withdrawn {
                "withdrawn"
            } else {
                "older"
            };
            println!("{:<16} {:<8} {:<10} {:<12} {}", v.name, v.version, v.size_bytes, state, v.hash);
        }
    })
}

/// `vmi image rollback`.
pub async fn rollback(args: ImageNameArgs) -> Result<()> {
    let v = client(&args.control)?.rollback_image(&args.name).await.context("rolling back")?;
    crate::output::emit(&v, || {
        println!(
            "{} is back on version {}: phones move to it on their next restart (vmi vm restart USER)",
            v.name, v.version
        );
    })
}

/// The base URL of the site running (or to run) `user`'s phone.
async fn site_of(control: &ControlClient, user: &str, site: Option<&str>) -> Result<(String, String)> {
    if let Some(site) = site {
        control.set_placement(user, site).await.with_context(|| format!("placing {user}'s phone on {site}"))?;
    }
    let p = control.placement(user).await.with_context(|| format!("finding {user}'s phone"))?;
    Ok((p.site, p.site_url))
}

/// `vmi vm create USER [--site S]`: boots the user's phone (admitted against their tenant's quotas).
pub async fn create_phone(args: PhoneArgs) -> Result<()> {
    let control = client(&args.control)?;
    // A user has one phone: never boot a second one beside a running one.
    if let Ok(p) = control.placement(&args.user).await {
        let (_, body) = crate::credentials::operator_caller()?
            .get_bytes(&format!("{}/v1/phones", p.site_url))
            .await
            .unwrap_or_default();
        let listed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let runs = listed["phones"].as_array().into_iter().flatten().any(|ph| ph["user"] == args.user.as_str());
        if runs {
            match args.site.as_deref() {
                Some(to) if to != p.site => bail!(
                    "{}'s phone already runs on {}: `vmi vm migrate {} --to {to}` moves it",
                    args.user,
                    p.site,
                    args.user
                ),
                _ => bail!("{}'s phone already runs on {}", args.user, p.site),
            }
        }
    }
    let (site, url) = site_of(&control, &args.user, args.site.as_deref()).await?;
    let (status, body) = crate::credentials::operator_caller()?
        .post_json(&format!("{url}/v1/phones"), &serde_json::json!({ "user": args.user }))
        .await
        .context("asking the site")?;
    if status != 201 {
        bail!("{site} did not boot {}'s phone: {}", args.user, error_text(&body));
    }
    let created = serde_json::json!({ "user": args.user, "site": site, "created": true });
    crate::output::emit(&created, || println!("{}'s phone runs on {site}", args.user))
}

/// `vmi vm restart USER`: the phone moves to its image's current version, keeping the user's data.
pub async fn restart(args: PhoneArgs) -> Result<()> {
    let control = client(&args.control)?;
    let (site, url) = site_of(&control, &args.user, None).await?;
    let (status, body) = crate::credentials::operator_caller()?
        .post_json(&format!("{url}/v1/phones/{}/restart", args.user), &serde_json::json!({}))
        .await
        .context("asking the site")?;
    if status != 200 {
        bail!("{site} did not restart {}'s phone: {}", args.user, error_text(&body));
    }
    let report: serde_json::Value = serde_json::from_str(&body).context("reading the site's answer")?;
    let name = |r: &serde_json::Value| match (r["name"].as_str(), r["version"].as_u64()) {
        (Some(n), Some(v)) => format!("{n} version {v}"),
        _ => "the built-in image".to_owned(),
    };
    crate::output::emit(&report, || {
        if report["upgraded"] == true {
            println!(
                "{}'s phone restarted on {} (was {}), data kept",
                args.user,
                name(&report["to"]),
                name(&report["from"])
            );
        } else {
            println!("{}'s phone restarted on {}", args.user, name(&report["to"]));
        }
    })?;
    if let Some(e) = report["upgrade_error"].as_str() {
        bail!("the phone stays on {}: {e}", name(&report["to"]));
    }
    if let Some(e) = report["not_saved"].as_str() {
        bail!("the phone runs, but its state could not be written to the site's disk: {e}");
    }
    Ok(())
}

/// The `error` of a JSON error body, or the body.
fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_memory(s: &str) -> Result<Limit<u64>, String> {
    if s.eq_ignore_ascii_case("unlimited") { Ok(Limit::Unlimited) } else { parse_size(s).map(Limit::At) }
}

fn parse_count(s: &str) -> Result<Limit<u32>, String> {
    if s.eq_ignore_ascii_case("unlimited") {
        Ok(Limit::Unlimited)
    } else {
        s.parse().map(Limit::At).map_err(|_| format!("{s:?} is not a number of phones or \"unlimited\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(matches!(parse_memory("unlimited"), Ok(Limit::Unlimited)));
        assert!(matches!(parse_count("3"), Ok(Limit::At(3))));
        assert!(parse_count("-1").is_err());
    }
}
