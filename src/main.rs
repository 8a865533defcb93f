//! The `signpost` command: parse flags, load config, run or check.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use signpost::config::{Cli, Command, Config};
use signpost::server::{load_zones, Signpost};

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

fn check(config: &Config) -> anyhow::Result<()> {
    let defs = load_zones(config)?;
    let zones = match &config.zones {
        Some(dir) => signpost::dns::zones::load_dir(dir)?,
        None => Vec::new(),
    };
    println!(
        "ok: configuration valid; {} definition file(s), {} instance(s), {} static zone(s)",
        defs.files,
        defs.instance_count(),
        zones.len()
    );
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let signpost = Signpost::start(config).await?;
    wait_for_signal()
        .await
        .context("cannot listen for signals")?;
    tracing::info!("shutting down");
    signpost.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Check) => check(&config),
        None => {
            init_logging(&config.log_level);
            tokio::runtime::Runtime::new()
                .context("cannot start the async runtime")
                .and_then(|rt| rt.block_on(run(config)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
