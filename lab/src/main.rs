//! `pgrouter-lab`: run the local Patroni lab by hand (`up`) or with pgrouter in front of it (`demo`).

mod cli {
    pub mod args;
    pub mod run;
}

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::args::parse(&argv) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{}", cli::args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pgrouter-lab: {e:#}\n\n{}", cli::args::USAGE);
            return ExitCode::from(2);
        }
    };
    match cli::run::run(&opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgrouter-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
