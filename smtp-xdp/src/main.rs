//! `smtp-xdp`: the controller of the smtp-xdp XDP program.

mod cli;
mod commands;
mod generate;

use std::process::ExitCode;

use clap::Parser as _;
use smtp_xdp::{
    config::LogFormat,
    daemon::{self, RunOptions},
};

use cli::{Cli, Command, RunArgs};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// CLI commands die quietly when their output goes away (`smtp-xdp bans | head -1`), as other
/// Unix tools do, instead of panicking in `println!`. The daemon keeps ignoring SIGPIPE: a
/// client closing a socket is not a reason to exit.
fn default_sigpipe() {
    // SAFETY: resetting a signal disposition to its default, before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn main() -> ExitCode {
    // The package build's `smtp-xdp generate man|completions DIR`, outside the public CLI.
    if std::env::args().nth(1).as_deref() == Some("generate") {
        return exit(generate::main(std::env::args().skip(1)));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_daemon(args),
        other => {
            default_sigpipe();
            init_logging(LogFormat::Human);
            commands::dispatch(other)
        }
    };
    exit(result)
}

fn exit(result: anyhow::Result<i32>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("smtp-xdp: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(args: Box<RunArgs>) -> anyhow::Result<i32> {
    let opts = RunOptions {
        config: args.config.clone(),
        cli: args.overrides(),
        fresh: args.fresh,
        keep_attached: args.keep_attached,
    };
    // Settings are checked before anything else so a typo fails at once, in one line.
    let resolved = daemon::resolve_settings(&opts)?;
    init_logging(resolved.settings.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(opts))
}
