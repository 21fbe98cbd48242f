//! `weft proxy`: run the node proxy (in the node's network namespace).

use std::path::PathBuf;

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
}

pub(crate) fn run(args: &ProxyArgs) -> Result<()> {
    let name = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {name}"))?;
    let config = ProxyConfig::parse(&name, &text)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
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
        weft_proxy::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })
}
