//! The `signpost` command: parse flags, load config, run or check.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use signpost::cli::{Cli, Command};
use signpost::config::{Config, Flags};
use signpost::server::{load_zones, Signpost};

/// mimalloc, set up as `signpost::alloc` says why.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
signpost::configure_allocator!();

/// SIGHUP's default action kills the process, and `systemctl reload` may
/// send one right after a start: it is ignored from before `main` (an ELF
/// constructor) until the runtime's handler takes over in `run`, which
/// queues it while loading.
extern "C" fn ignore_hangup_until_ready() {
    // SAFETY: sets a signal's disposition to SIG_IGN; runs before any
    // other thread exists.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
}
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static IGNORE_HANGUP: extern "C" fn() = ignore_hangup_until_ready;

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
    // Handlers first, loading after: a SIGHUP while loading (systemctl
    // reload right after a start) is queued and applied once serving, a
    // SIGTERM stops the start cleanly.
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let start = Signpost::start(config);
    tokio::pin!(start);
    let mut signpost = tokio::select! {
        s = &mut start => s?,
        _ = term.recv() => {
            tracing::info!("SIGTERM during startup: stopped before serving");
            return Ok(());
        }
        _ = int.recv() => {
            tracing::info!("SIGINT during startup: stopped before serving");
            return Ok(());
        }
    };
    signpost::alloc::release_freed_memory();
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
    let cli = Cli::parse_from(signpost::cli::consul_style_args(std::env::args().collect()));
    match cli.command {
        Some(Command::Completion { shell }) => {
            // Into memory first: clap_complete panics on a write error, and
            // `signpost completion bash | head` closes the pipe early.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "signpost", &mut script);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&script);
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
                eprintln!("error: cannot render the man page: {e}");
                return ExitCode::FAILURE;
            }
            use std::io::Write;
            // A reader that stops early (`| head`) is not an error.
            let _ = std::io::stdout().write_all(&page);
            return ExitCode::SUCCESS;
        }
        Some(Command::Client(c)) => {
            return ExitCode::from(signpost::cli::run(c) as u8);
        }
        Some(Command::Check) | None => {}
    }
    let check_only = cli.command.is_some();
    let config = match Config::load(&cli.opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match check_only {
        true => check(&config),
        false => {
            init_logging(&config);
            if let Some((before, now)) = signpost::fds::raise_to_hard() {
                tracing::info!(
                    "open file limit: {now} (soft limit was {before}; the hard limit caps it)"
                );
            }
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_unpark(signpost::alloc::worker_busy)
                .on_thread_park(signpost::alloc::worker_idle)
                .build()
                .context("cannot start the async runtime")
                .and_then(|rt| rt.block_on(run(config, cli.opts)));
            // Leave without exit-time destructors: a SIGTERM during startup
            // drops `start` half-way, and its DNS threads may still be
            // running while atexit handlers tear down the allocator. Every
            // acknowledged write is on disk already (a clean shutdown
            // closed the store; a cut-short start only read it).
            let code = match &result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            };
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(code) }
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
