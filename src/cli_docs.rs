//! The man page and the bash completion, generated from the command line's clap definition
//! (`pgrouter man`, `pgrouter completion bash`), so they name every option the binary has.

use clap::{Arg, Command};

/// Escapes text for roff: backslashes, hyphens (so they print as ASCII), and a leading dot
/// or quote that would start a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.starts_with(['.', '\'']) {
        true => format!("\\&{escaped}"),
        false => escaped,
    }
}

/// The options of `cmd` (help and version included), positionals apart.
fn options(cmd: &Command) -> Vec<&Arg> {
    cmd.get_arguments().filter(|a| !a.is_positional()).collect()
}

/// `-c, --config <CONFIG>` in roff.
fn option_line(arg: &Arg) -> String {
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(format!("\\fB\\-{s}\\fR"));
    }
    if let Some(l) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", roff(l)));
    }
    let mut line = names.join(", ");
    if arg.get_action().takes_values() {
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
        line += &format!(" \\fI{}\\fR", roff(&value));
    }
    line
}

/// What an argument's help says, with its choices and its environment variable.
fn arg_help(arg: &Arg) -> String {
    let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    // clap drops a help line's final period; the sentences added below need it back.
    if !help.is_empty() && !help.ends_with('.') {
        help.push('.');
    }
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_owned())
        .collect();
    if !choices.is_empty() {
        help += &format!(" One of: {}.", choices.join(", "));
    }
    if let Some(env) = arg.get_env() {
        help += &format!(" Environment: {}.", env.to_string_lossy());
    }
    roff(help.trim())
}

/// The arguments of `cmd`; in a subcommand's section (`sub`), not the global options and help
/// flag the top section already gives.
fn describe_args(cmd: &Command, sub: bool, out: &mut String) {
    for arg in cmd.get_arguments().filter(|a| a.is_positional()) {
        let name = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
        out.push_str(&format!(
            ".TP\n\\fI{}\\fR\n{}\n",
            roff(&name),
            arg_help(arg)
        ));
    }
    let repeated = |a: &Arg| sub && (a.is_global_set() || a.get_id() == "help");
    for arg in options(cmd)
        .into_iter()
        .filter(|a| !a.is_hide_set() && !repeated(a))
    {
        out.push_str(&format!(".TP\n{}\n{}\n", option_line(arg), arg_help(arg)));
    }
}

/// The man page (section 1) of `cmd`: its options, then each visible subcommand's.
pub fn man_page(cmd: &Command) -> String {
    // Built: with the help and version flags clap adds, globals given to each subcommand.
    let mut cmd = cmd.clone();
    cmd.build();
    let cmd = &cmd;
    let name = cmd.get_name();
    let version = cmd.get_version().unwrap_or_default();
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let mut out = format!(
        ".TH {} 1 \"\" \"{name} {version}\" \"User Commands\"\n.SH NAME\n{name} \\- {}\n",
        name.to_uppercase(),
        roff(&about)
    );
    out += &format!(
        ".SH SYNOPSIS\n\\fB{name}\\fR [\\fIOPTIONS\\fR] [\\fICOMMAND\\fR]\n.SH DESCRIPTION\n{}\n",
        roff(&about)
    );
    out += ".SH OPTIONS\n";
    describe_args(cmd, false, &mut out);
    out += ".SH COMMANDS\n";
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        out += &format!(
            ".SS \"{name} {}\"\n{}\n",
            roff(sub.get_name()),
            roff(&about)
        );
        describe_args(sub, true, &mut out);
    }
    out += &format!(
        ".SH FILES\n.TP\n/etc/{name}/{name}.toml\nThe configuration file the packaged service reads.\n\
         .SH \"SEE ALSO\"\nThe README shipped in /usr/share/doc/{name}.\n"
    );
    out
}

/// The words completing `cmd`'s options: `--long` and `-s` of each visible one.
fn option_words(cmd: &Command) -> Vec<String> {
    let mut words = Vec::new();
    for arg in options(cmd).into_iter().filter(|a| !a.is_hide_set()) {
        if let Some(l) = arg.get_long() {
            words.push(format!("--{l}"));
        }
        if let Some(s) = arg.get_short() {
            words.push(format!("-{s}"));
        }
    }
    words
}

/// A bash completion script for `cmd`: subcommands, each one's options, the choices of
/// options that have them and file names for the other options taking a value.
pub fn bash_completion(cmd: &Command) -> String {
    let mut cmd = cmd.clone();
    cmd.build();
    let cmd = &cmd;
    let name = cmd.get_name();
    let function = format!("_{}", name.replace('-', "_"));
    let subs: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let mut top = option_words(cmd);
    top.extend(subs.iter().map(|s| s.get_name().to_owned()));
    let mut cases = String::new();
    for sub in &subs {
        // Global options are among each subcommand's once built.
        let words = option_words(sub);
        cases += &format!(
            "        {}) words=\"{}\" ;;\n",
            sub.get_name(),
            words.join(" ")
        );
    }
    let mut values = String::new();
    let all = std::iter::once(cmd).chain(subs.iter().copied());
    for arg in all.flat_map(options) {
        if !arg.get_action().takes_values() {
            continue;
        }
        let mut names: Vec<String> = arg
            .get_long()
            .map(|l| format!("--{l}"))
            .into_iter()
            .collect();
        names.extend(arg.get_short().map(|s| format!("-{s}")));
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        let reply = match choices.is_empty() {
            true => "COMPREPLY=($(compgen -f -- \"$cur\"))".to_owned(),
            false => format!(
                "COMPREPLY=($(compgen -W \"{}\" -- \"$cur\"))",
                choices.join(" ")
            ),
        };
        values += &format!("        {}) {reply}; return ;;\n", names.join("|"));
    }
    format!(
        "# bash completion for {name}, generated by `{name} completion bash`.\n\
         {function}() {{\n\
         \x20   local cur=\"${{COMP_WORDS[COMP_CWORD]}}\" prev=\"${{COMP_WORDS[COMP_CWORD-1]}}\" sub=\"\" words i\n\
         \x20   case \"$prev\" in\n{values}    esac\n\
         \x20   for ((i = 1; i < COMP_CWORD; i++)); do\n\
         \x20       case \"${{COMP_WORDS[i]}}\" in -*) ;; *) sub=\"${{COMP_WORDS[i]}}\"; break ;; esac\n\
         \x20   done\n\
         \x20   case \"$sub\" in\n{cases}        *) words=\"{}\" ;;\n    esac\n\
         \x20   COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n\
         }}\n\
         complete -F {function} {name}\n",
        top.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("tool")
            .version("1.2.3")
            .about("Does -things- well")
            .arg(
                Arg::new("config")
                    .short('c')
                    .long("config")
                    .global(true)
                    .help("Config file")
                    .env("TOOL_CONFIG"),
            )
            .subcommand(
                Command::new("check").about("Check it").arg(
                    Arg::new("no-files")
                        .long("no-files")
                        .action(clap::ArgAction::SetTrue)
                        .help(".starts with a dot"),
                ),
            )
            .subcommand(
                Command::new("status").arg(
                    Arg::new("format")
                        .long("format")
                        .value_parser(["text", "json"]),
                ),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn the_man_page_lists_every_visible_option_escaped() {
        let page = man_page(&cli());
        assert!(page.starts_with(".TH TOOL 1 \"\" \"tool 1.2.3\" \"User Commands\"\n.SH NAME\ntool \\- Does \\-things\\- well\n"), "{page}");
        assert!(page.contains(".TP\n\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fICONFIG\\fR\nConfig file. Environment: TOOL_CONFIG.\n"), "{page}");
        // Once, in the options section: not again under each subcommand.
        assert_eq!(page.matches("Config file.").count(), 1, "{page}");
        assert!(page.contains(".SS \"tool check\"\nCheck it\n"), "{page}");
        assert!(
            page.contains("\\fB\\-\\-no\\-files\\fR\n\\&.starts with a dot.\n"),
            "{page}"
        );
        assert!(page.contains("One of: text, json."), "{page}");
        assert!(!page.contains("secret"), "{page}");
    }

    #[test]
    fn the_bash_completion_offers_subcommands_options_and_choices() {
        let script = bash_completion(&cli());
        assert!(script.contains("complete -F _tool tool\n"), "{script}");
        let complete =
            |words: &[&str]| -> String {
                let line =
                    format!(
                "{script}\nCOMP_WORDS=({}); COMP_CWORD={}; _tool; echo \"${{COMPREPLY[*]}}\"",
                words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
                words.len() - 1
            );
                let out = std::process::Command::new("bash")
                    .arg("-c")
                    .arg(line)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap().trim().to_owned()
            };
        assert_eq!(complete(&["tool", "ch"]), "check");
        assert_eq!(
            complete(&["tool", "check", "--"]),
            "--no-files --config --help"
        );
        assert_eq!(complete(&["tool", "status", "--format", "j"]), "json");
        assert_eq!(complete(&["tool", "se"]), "");
    }
}
