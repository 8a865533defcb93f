//! The `signpost` command: parse flags, load config, run or check.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use signpost::config::{Cli, Command, Config, Flags};
use signpost::server::{load_zones, Signpost};

/// mimalloc, set up as `signpost::alloc` says why.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
signpost::configure_allocator!();

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
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

async fn run(config: Config, flags: Flags) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut signpost = Signpost::start(config).await?;
    signpost::alloc::release_freed_memory();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let reloaded = Config::load(&flags)
                    .map_err(anyhow::Error::from)
                    .and_then(|c| signpost.reload(c).map_err(anyhow::Error::from));
                if let Err(e) = reloaded {
                    tracing::error!("reload failed, still serving the previous data: {e:#}");
                }
                signpost::alloc::release_freed_memory();
            }
        }
    }
    tracing::info!("shutting down");
    signpost.shutdown().await;
    tracing::info!("stopped");
    Ok(())
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
            init_logging(&config);
            tokio::runtime::Runtime::new()
                .context("cannot start the async runtime")
                .and_then(|rt| rt.block_on(run(config, cli.opts)))
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
