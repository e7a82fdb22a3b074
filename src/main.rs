//! The `pgrouter` command: run the router, check a config file, or show a router's status.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use pgrouter::config::Config;

#[derive(Parser)]
#[command(version, about = "PostgreSQL-aware router for Patroni clusters")]
struct Cli {
    /// Config file (TOML).
    #[arg(short, long, env = "PGROUTER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format; the level comes from RUST_LOG, else `log.level` in the config.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router (the default).
    Run,
    /// Validate the config file and every file it names (auth file, certificates and keys) and
    /// exit: 0 when good, 2 with the key and the reason when not.
    CheckConfig {
        /// Check the values only, not the files they name: for a config checked away from the
        /// router's host (CI, a build machine).
        #[arg(long)]
        no_files: bool,
    },
    /// Write a pgrouter config from a pgbouncer.ini (and its userlist), naming each setting it
    /// cannot carry over and why; the result passes check-config.
    ImportPgbouncer {
        /// pgbouncer.ini
        ini: PathBuf,
        /// The userlist.txt to use as auth.auth_file (default: the ini's auth_file).
        userlist: Option<PathBuf>,
        /// The Patroni cluster's scope.
        #[arg(long)]
        scope: String,
        /// An etcd endpoint of the cluster (repeat for several).
        #[arg(long, required = true)]
        etcd: Vec<String>,
        /// Where to write the config (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the man page (roff), generated from this command line.
    #[command(hide = true)]
    Man,
    /// Print a shell completion script (bash), generated from this command line.
    #[command(hide = true)]
    Completion {
        #[arg(value_parser = ["bash"])]
        shell: String,
    },
    /// Print a running router's view of the cluster and its clients, from its /status; with
    /// several --admin, the routers side by side and whether they agree on the leader.
    Status {
        /// Admin endpoint (repeat for several routers); default: `listen.admin` of --config,
        /// else http://127.0.0.1:8080.
        #[arg(long)]
        admin: Vec<String>,
        /// Print again every SECS seconds (2 when no value is given) until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
        /// Tables, or the /status JSON (with --watch, one document per line).
        #[arg(long, value_enum, default_value = "text")]
        format: StatusFormat,
        /// Bearer token; default: `listen.admin_token` of --config.
        #[arg(long, env = "PGROUTER_ADMIN_TOKEN")]
        token: Option<String>,
        /// PEM CA certificate the admin endpoint's certificate must chain to (https URLs).
        #[arg(long, env = "PGROUTER_ADMIN_CA")]
        cacert: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("pgrouter: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Man => {
            print!("{}", pgrouter::cli_docs::man_page(&Cli::command()));
            ExitCode::SUCCESS
        }
        Command::Completion { .. } => {
            print!("{}", pgrouter::cli_docs::bash_completion(&Cli::command()));
            ExitCode::SUCCESS
        }
        Command::ImportPgbouncer {
            ini,
            userlist,
            scope,
            etcd,
            output,
        } => import_pgbouncer(&ini, userlist.as_deref(), &scope, &etcd, output.as_deref()),
        Command::Status {
            mut admin,
            watch,
            format,
            token,
            cacert,
        } => {
            let listen = config.map(|c| c.listen);
            if admin.is_empty() {
                admin.push(match &listen {
                    None => "http://127.0.0.1:8080".to_owned(),
                    // A local admin certificate names localhost (README, Operations).
                    Some(l) if l.admin_tls && local(l.admin.ip()) => {
                        format!("https://localhost:{}", l.admin.port())
                    }
                    Some(l) if l.admin_tls => format!("https://{}", l.admin),
                    Some(l) => format!("http://{}", l.admin),
                });
            }
            let watch = match watch {
                Some(s) if !(s.is_finite() && s >= 0.1) => {
                    eprintln!("pgrouter status: --watch needs at least 0.1 seconds, not {s}");
                    return ExitCode::from(2);
                }
                s => s.map(std::time::Duration::from_secs_f64),
            };
            let format = match format {
                StatusFormat::Text => pgrouter::status_cli::several::Format::Text,
                StatusFormat::Json => pgrouter::status_cli::several::Format::Json,
            };
            let token = token.or_else(|| listen.and_then(|l| l.admin_token));
            let (token, ca) = (token.as_deref(), cacert.as_deref());
            match pgrouter::status_cli::several::run(&admin, token, ca, format, watch) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgrouter status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { .. } | Command::Run if config.is_none() => {
            eprintln!("pgrouter: no config file: pass --config FILE or set PGROUTER_CONFIG");
            ExitCode::from(2)
        }
        Command::CheckConfig { no_files } => {
            let config = config.expect("checked above");
            let path = cli.config.clone().unwrap_or_default();
            let errors = match no_files {
                true => Vec::new(),
                false => pgrouter::app::check_files(&config),
            };
            for e in &errors {
                eprintln!("pgrouter: {}: {e}", path.display());
            }
            if !errors.is_empty() {
                return ExitCode::from(2);
            }
            println!("{}: ok", cli.config.unwrap_or_default().display());
            ExitCode::SUCCESS
        }
        Command::Run => {
            let config = config.expect("checked above");
            init_tracing(cli.log_format, &config.log.level);
            run(config, cli.config)
        }
    }
}

/// Whether the admin endpoint bound to `ip` is reached on this host's loopback.
fn local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

fn import_pgbouncer(
    ini: &std::path::Path,
    userlist: Option<&std::path::Path>,
    scope: &str,
    etcd: &[String],
    output: Option<&std::path::Path>,
) -> ExitCode {
    let text = match std::fs::read_to_string(ini) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "pgrouter import-pgbouncer: cannot read {}: {e}",
                ini.display()
            );
            return ExitCode::from(2);
        }
    };
    let userlist = userlist.map(|p| p.display().to_string());
    let imported = match pgrouter::import_pgbouncer::import(&text, userlist.as_deref(), scope, etcd)
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pgrouter import-pgbouncer: {}: {e}", ini.display());
            return ExitCode::from(2);
        }
    };
    for n in &imported.not_carried {
        eprintln!("not carried over: {n}");
    }
    match output {
        None => print!("{}", imported.toml),
        Some(path) => {
            if let Err(e) = std::fs::write(path, &imported.toml) {
                eprintln!(
                    "pgrouter import-pgbouncer: cannot write {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {}", path.display());
        }
    }
    ExitCode::SUCCESS
}

fn run(config: Config, path: Option<PathBuf>) -> ExitCode {
    // This thread's runtime runs the router and the first worker's share of the clients;
    // `app::run` starts the other workers (`pgrouter::shards`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgrouter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pgrouter::app::run(config, path, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgrouter: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
