//! Command-line parsing for the `pgrouter-lab` binary (std only).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

pub const USAGE: &str = "\
usage:
  pgrouter-lab up   [--dir D] [--base-port P]
  pgrouter-lab demo [--dir D] [--base-port P] [--pgrouter PATH] [--primary ADDR] [--replicas ADDR]

  up    start etcd + 3 Patroni/PostgreSQL 15 members on 127.0.0.1 and wait for Ctrl-C
  demo  the same, plus pgrouter in front of it (config written to <dir>/pgrouter.toml)

  --dir D          lab directory, wiped at start   [/tmp/pgrouter-demo]
  --base-port P    etcd on P, P+2, P+4, PostgreSQL on P+10.., Patroni REST on P+20..   [15400]
  --pgrouter PATH  pgrouter binary   [target/release/pgrouter]
  --primary ADDR   pgrouter's read-write listener   [127.0.0.1:5000]
  --replicas ADDR  pgrouter's read-only listener    [127.0.0.1:5001]";

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Demo,
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub dir: PathBuf,
    pub base_port: u16,
    pub pgrouter: PathBuf,
    pub primary: String,
    pub replicas: String,
}

/// Parse the arguments after the program name; `Ok(None)` means help was asked for.
pub fn parse(args: &[String]) -> Result<Option<Options>> {
    let mode = match args.first().map(String::as_str) {
        Some("up") => Mode::Up,
        Some("demo") => Mode::Demo,
        None | Some("-h" | "--help" | "help") => return Ok(None),
        Some(other) => bail!("unknown command {other:?}"),
    };
    let mut opts = Options {
        mode,
        dir: PathBuf::from("/tmp/pgrouter-demo"),
        base_port: 15400,
        pgrouter: PathBuf::from("target/release/pgrouter"),
        primary: "127.0.0.1:5000".to_string(),
        replicas: "127.0.0.1:5001".to_string(),
    };
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let known = [
            "--dir",
            "--base-port",
            "--pgrouter",
            "--primary",
            "--replicas",
        ];
        if !known.contains(&flag) {
            bail!("unknown option {flag:?}");
        }
        if mode == Mode::Up && !["--dir", "--base-port"].contains(&flag) {
            bail!("{flag} is only for `demo`");
        }
        let Some(value) = inline.or_else(|| rest.next().cloned()) else {
            bail!("{flag} needs a value");
        };
        match flag {
            "--dir" => opts.dir = PathBuf::from(value),
            "--base-port" => {
                opts.base_port = value
                    .parse()
                    .with_context(|| format!("bad --base-port {value:?}"))?
            }
            "--pgrouter" => opts.pgrouter = PathBuf::from(value),
            "--primary" => opts.primary = value,
            _ => opts.replicas = value,
        }
    }
    Ok(Some(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_defaults_and_flags() {
        let o = parse(&args("up")).unwrap().unwrap();
        assert_eq!((o.mode, o.base_port), (Mode::Up, 15400));
        assert_eq!(o.dir, PathBuf::from("/tmp/pgrouter-demo"));
        let o = parse(&args(
            "demo --dir /x --base-port=17000 --pgrouter ./p --replicas 127.0.0.1:6001",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.mode, Mode::Demo);
        assert_eq!((o.dir.to_str(), o.base_port), (Some("/x"), 17000));
        assert_eq!(o.pgrouter, PathBuf::from("./p"));
        assert_eq!(
            (o.primary.as_str(), o.replicas.as_str()),
            ("127.0.0.1:5000", "127.0.0.1:6001")
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&args("")).unwrap().is_none());
        assert!(parse(&args("demo --help")).unwrap().is_none());
        assert!(parse(&args("down")).is_err());
        assert!(parse(&args("up --pgrouter x")).is_err());
        assert!(parse(&args("up --base-port")).is_err());
        assert!(parse(&args("up --base-port 99999")).is_err());
        let e = parse(&args("up --bogus")).unwrap_err().to_string();
        assert!(e.contains("unknown option"), "{e}");
    }
}
