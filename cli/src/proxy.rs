//! `weft proxy`: run the node proxy (in the node's network namespace).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use weft_proxy::config::ProxyConfig;

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The proxy's config file (YAML).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Worker threads of the data path.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Remove capture from this node (attachments, pins, policy route) and
    /// exit, instead of running.
    #[arg(long)]
    uninstall: bool,
}

/// Reads and validates the config file.
fn load(path: &Path) -> Result<ProxyConfig> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    Ok(ProxyConfig::parse(&name, &text)?)
}

pub(crate) fn run(args: &ProxyArgs) -> Result<()> {
    let config = load(&args.config)?;
    if args.uninstall {
        weft_proxy::capture::uninstall(&config)?;
        println!(
            "capture removed: {} and the policy route are gone",
            config.capture.pin_dir.display()
        );
        return Ok(());
    }
    // One worker: tokio's single-threaded scheduler, which wakes and polls
    // a task without the cross-thread bookkeeping of the multi-threaded
    // one (nothing to steal from).
    let rt = match args.workers {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    }
    .enable_all()
    .build()
    .context("starting the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        // SIGHUP: read the file again; a file that does not validate is
        // reported and changes nothing.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut ca = None;
        if let Some(endpoint) = config.control_plane.clone() {
            let token = match &config.control_plane_token {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading controlPlaneToken {}", path.display()))?,
                ),
                None => None,
            };
            let client = match &config.control_plane_ca {
                Some(ca) => weft_proxy::discovery::client::ControlPlaneClient::with_tls(&endpoint, token.as_deref(), ca),
                None => weft_proxy::discovery::client::ControlPlaneClient::new(&endpoint, token.as_deref()),
            }
            .map_err(anyhow::Error::msg)?;
            tokio::spawn(weft_proxy::discovery::client::follow(client.clone(), config.node.clone(), tx.clone()));
            if let (Some(token), Some(path)) = (token, config.control_plane_token.clone()) {
                tokio::spawn(refresh_token(client.clone(), path, token));
                ca = Some(client);
            }
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let path = args.config.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let loaded = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || load(&path)
                })
                .await;
                match loaded {
                    Ok(Ok(config)) => {
                        let update = weft_proxy::update::Update {
                            change: weft_proxy::update::Change::File(Box::new(config)),
                            done: None,
                        };
                        if tx.send(update).await.is_err() {
                            return;
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "config reload refused; keeping the current config"),
                    Err(e) => tracing::error!(error = %e, "config reload task failed"),
                }
            }
        });
        // The standard OpenTelemetry variables, read once here.
        let otel_vars: std::collections::HashMap<String, String> =
            std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")).collect();
        let otel = weft_proxy::telemetry::Env::from_vars(|k| otel_vars.get(k).cloned());
        weft_proxy::run(config, rx, ca, otel, shutdown).await.map_err(anyhow::Error::from)
    })
}

/// Reads the token file again every minute and sends its new content from
/// then on: a projected service account token is rotated in place by the
/// kubelet. A file that cannot be read keeps the last token.
async fn refresh_token(
    client: weft_proxy::discovery::client::ControlPlaneClient,
    path: PathBuf,
    mut current: String,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.tick().await;
    loop {
        every.tick().await;
        match tokio::fs::read_to_string(&path).await {
            Ok(token) if token != current => match client.set_token(&token) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "control plane token renewed");
                    current = token;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "new control plane token refused; keeping the last one");
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading the control plane token; keeping the last one");
            }
        }
    }
}
