//! `smtp-xdp generate man|completions DIR`: the manual pages and shell completions, generated
//! from the CLI definition itself when the package is built, so they never drift from it.
//!
//! Not part of the public CLI (`main` dispatches it before clap parses the rest), so it appears
//! in neither the pages nor the completions it writes.
//!
//! Pages: `smtp-xdp(8)` and one per subcommand (`smtp-xdp-run(8)`, `smtp-xdp-allow-load(8)`,
//! ...), and `smtp-xdp.toml(5)`, the config file, written from the config keys
//! ([`ALL_KEYS`]): each key's help is its `run` flag's, its default the built-in
//! [`Settings::default`], and the example is `smtp-xdp.example.toml`.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use clap::{CommandFactory as _, Parser, ValueEnum};
use clap_complete::Shell;
use smtp_xdp::config::{Settings, ALL_KEYS, DEFAULT_CONFIG, LIVE_KEYS, RESTART_KEYS};

use crate::cli::Cli;

/// The example config file, shown whole in smtp-xdp.toml(5).
const EXAMPLE: &str = include_str!("../../smtp-xdp.example.toml");

#[derive(Parser)]
#[command(
    name = "smtp-xdp generate",
    about = "Write the manual pages or the shell completions (used when building the package)"
)]
struct GenerateCli {
    /// What to write.
    what: What,
    /// The directory to write into (created if missing).
    dir: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum What {
    /// `man8/*.8` and `man5/smtp-xdp.toml.5`.
    Man,
    /// `bash/smtp-xdp`, `zsh/_smtp-xdp` and `fish/smtp-xdp.fish`.
    Completions,
}

/// Runs `smtp-xdp generate ARGS` (`args` start with "generate").
pub fn main(args: impl IntoIterator<Item = String>) -> anyhow::Result<i32> {
    let cli = GenerateCli::parse_from(args);
    let written = match cli.what {
        What::Man => man(&cli.dir)?,
        What::Completions => completions(&cli.dir)?,
    };
    for p in written {
        println!("{}", p.display());
    }
    Ok(0)
}

/// The CLI as the pages and completions show it.
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes `man8/` (the command and every subcommand, recursively) and `man5/` under `dir`.
pub fn man(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let man8 = dir.join("man8");
    let man5 = dir.join("man5");
    for d in [&man8, &man5] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut written = Vec::new();
    let cmd = command();
    write_page(&man8, &cmd, true, &mut written)?;
    let path = man5.join("smtp-xdp.toml.5");
    fs::write(&path, config_page()).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    Ok(written)
}

fn write_page(
    dir: &Path,
    cmd: &clap::Command,
    top: bool,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(dir, sub, false, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("smtp-xdp manual")
        .source(format!("smtp-xdp {}", smtp_xdp::version::VERSION));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    if top {
        page.extend_from_slice(top_page_extra().as_bytes());
        man.render_version_section(&mut page)?;
    } else {
        page.extend_from_slice(
            b".SH \"SEE ALSO\"\n\\fBsmtp\\-xdp\\fR(8), \\fBsmtp\\-xdp.toml\\fR(5)\n",
        );
    }
    let path = dir.join(man.get_filename());
    fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    Ok(())
}

/// FILES, SIGNALS and SEE ALSO of smtp-xdp(8).
fn top_page_extra() -> String {
    let state = roff_escape(smtp_xdp::config::DEFAULT_STATE_DIR);
    let pins = roff_escape(smtp_xdp::pins::PIN_ROOT);
    let run = roff_escape(smtp_xdp::pins::RUN_DIR);
    let config = roff_escape(DEFAULT_CONFIG);
    format!(
        r#".SH FILES
.TP
{config}
The configuration file, see \fBsmtp\-xdp.toml\fR(5).
.TP
{state}/\fIIFACE\fR.state.json
Bans, both lists and live overrides, restored after a reboot.
.TP
{state}/\fIIFACE\fR.audit.log
The audit trail: one JSON line per operator action.
.TP
{pins}/\fIIFACE\fR/
The pinned program link and maps: the live state every command works on.
.TP
{run}/
Lock files of the controller and of list writers.
.SH SIGNALS
.TP
SIGHUP
Reread the configuration file (and the \fBdeny\-files\fR); an invalid file is refused and the policy in force stays.
.TP
SIGTERM, SIGINT
Save the state and detach (or, with \fB\-\-keep\-attached\fR, leave the program enforcing for the next start to adopt).
.SH "SEE ALSO"
\fBsmtp\-xdp.toml\fR(5), \fBsmtp\-xdp\-run\fR(8), \fBsystemd.service\fR(5), /usr/share/doc/smtp\-xdp/README.md
"#
    )
}

/// Escapes text for roff: backslashes and hyphens, and a leading dot or quote.
fn roff_escape(s: &str) -> String {
    let mut out = s.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with(['.', '\'']) {
        out.insert_str(0, "\\&");
    }
    out
}

/// A `run` flag's help, split into the text (as a sentence) and the `[default: ...]` it states.
fn flag_help(run: &clap::Command, key: &str) -> (String, Option<String>) {
    let help = run
        .get_arguments()
        .find(|a| a.get_long() == Some(key))
        .and_then(|a| a.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let (text, stated) = match help.split_once(" [default: ") {
        Some((text, rest)) => (
            text.to_string(),
            rest.split_once(']').map(|(d, _)| d.to_string()),
        ),
        None => (help, None),
    };
    let text = text.trim_end_matches('.').to_string() + ".";
    (text, stated)
}

/// smtp-xdp.toml(5).
pub fn config_page() -> String {
    let cmd = command();
    let run = cmd.find_subcommand("run").expect("run is a subcommand");
    let defaults = Settings::default();
    let mut out = String::new();
    out += &format!(
        ".TH SMTP\\-XDP.TOML 5 \"\" \"smtp-xdp {}\" \"smtp-xdp manual\"\n",
        smtp_xdp::version::VERSION
    );
    out += ".SH NAME\nsmtp\\-xdp.toml \\- configuration file of smtp\\-xdp(8)\n";
    out += &format!(".SH SYNOPSIS\n{}\n", roff_escape(DEFAULT_CONFIG));
    out += r#".SH DESCRIPTION
The configuration of \fBsmtp\-xdp run\fR, in TOML: top\-level \fIkey\fR = \fIvalue\fR lines, no sections. Every key is optional; a key left out has the default shown below. Each key is also a flag of \fBsmtp\-xdp run\fR with the same name (\fB\-\-rate\fR for \fBrate\fR), and a flag overrides the file.
.PP
Values are strings, numbers, booleans, or (for \fBports\fR and \fBdeny\-files\fR) lists. Rates are \fICOUNT\fR/s, /min, /h or /d (e.g. "30/min"); durations look like 90s, 10m, 1h30m, 7d; "off" disables an optional rate or listener.
.PP
\fBsmtp\-xdp check\-config\fR validates a file and prints the settings it gives, each with where it comes from. \fBkill \-HUP\fR (or \fBsystemctl reload smtp\-xdp\fR) rereads the file and replaces the policy atomically; an invalid file is refused with a logged error and the policy in force stays. Keys marked \fIrestart\fR take effect at the next start. \fBsmtp\-xdp set\fR changes the keys marked \fIlive\fR in a running instance at once; such a change stays in force over the file until \fBsmtp\-xdp set \-\-reset\fR.
.SH KEYS
"#;
    for key in ALL_KEYS {
        let (help, stated) = flag_help(run, key);
        let value = match defaults.value(key) {
            Some(v) => roff_escape(&v.to_string()),
            None => format!(
                "\\fI({})\\fR",
                roff_escape(stated.as_deref().unwrap_or("none"))
            ),
        };
        let when = if RESTART_KEYS.contains(key) {
            "restart"
        } else if LIVE_KEYS.contains(key) {
            "reload, live"
        } else {
            "reload"
        };
        out += &format!(
            ".TP\n\\fB{}\\fR = {value}\n{}\n.br\nChanges with: \\fI{when}\\fR.\n",
            roff_escape(key),
            roff_escape(&help)
        );
    }
    out += ".SH EXAMPLE\nThe commented example, \\fB/usr/share/doc/smtp\\-xdp/examples/smtp\\-xdp.example.toml\\fR, installed as the default configuration file:\n.PP\n.nf\n.RS 4\n";
    for line in EXAMPLE.lines() {
        out += &roff_escape(line);
        out += "\n";
    }
    out += ".RE\n.fi\n";
    out += ".SH \"SEE ALSO\"\n\\fBsmtp\\-xdp\\fR(8), \\fBsmtp\\-xdp\\-run\\fR(8), \\fBsmtp\\-xdp\\-check\\-config\\fR(8), \\fBsmtp\\-xdp\\-set\\fR(8)\n";
    out
}

/// Writes `bash/smtp-xdp`, `zsh/_smtp-xdp` and `fish/smtp-xdp.fish` under `dir`: the file names
/// of bash-completion, zsh's vendor-completions and fish's vendor_completions.d.
pub fn completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (shell, sub, name) in [
        (Shell::Bash, "bash", "smtp-xdp"),
        (Shell::Zsh, "zsh", "_smtp-xdp"),
        (Shell::Fish, "fish", "smtp-xdp.fish"),
    ] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut command(), "smtp-xdp", &mut buf);
        if buf.is_empty() {
            bail!("no {sub} completions generated");
        }
        let path = d.join(name);
        let mut f =
            fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        f.write_all(&buf)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_page_documents_every_key_with_its_real_default() {
        let page = config_page();
        let defaults = Settings::default();
        for key in ALL_KEYS {
            let head = format!(".TP\n\\fB{}\\fR = ", roff_escape(key));
            let at = page
                .find(&head)
                .unwrap_or_else(|| panic!("{key} missing from smtp-xdp.toml(5)"));
            let entry = &page[at + head.len()..];
            let value = defaults
                .value(key)
                .map_or("\\fI(".to_string(), |v| roff_escape(&v.to_string()));
            assert!(
                entry.starts_with(&value),
                "{key}: {}",
                &entry[..entry.len().min(80)]
            );
            let help = entry.lines().nth(1).unwrap_or_default();
            assert!(help.len() > 10, "{key} has no help in the page: {help:?}");
        }
        assert!(page.contains("dry\\-run = false"), "the example is shown");
    }

    #[test]
    fn flag_help_states_the_real_defaults() {
        let cmd = command();
        let run = cmd.find_subcommand("run").unwrap();
        let defaults = Settings::default();
        for key in ALL_KEYS {
            let Some(stated) = flag_help(run, key).1 else {
                continue;
            };
            let real = defaults.value_text(key);
            let off = |v: &str| matches!(v, "" | "none" | "off");
            if real == "(unset)" || (off(&real) && off(&stated)) {
                continue;
            }
            assert_eq!(stated, real, "--{key} says [default: {stated}]");
        }
    }

    #[test]
    fn pages_for_the_command_every_subcommand_and_the_config() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-man-{}", std::process::id()));
        let written = man(&dir).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "smtp-xdp.8",
            "smtp-xdp-run.8",
            "smtp-xdp-status.8",
            "smtp-xdp-allow.8",
            "smtp-xdp-allow-load.8",
            "smtp-xdp-deny-load.8",
            "smtp-xdp-check-config.8",
            "smtp-xdp.toml.5",
        ] {
            assert!(names.contains(&want.to_string()), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let top = fs::read_to_string(dir.join("man8/smtp-xdp.8")).unwrap();
        assert!(
            top.contains("smtp\\-xdp\\-run(8)"),
            "subcommands are listed"
        );
        assert!(top.contains(".SH FILES"), "{top}");
        let load = fs::read_to_string(dir.join("man8/smtp-xdp-deny-load.8")).unwrap();
        assert!(load.contains("\\-\\-format"), "{load}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_for_bash_zsh_and_fish() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-compl-{}", std::process::id()));
        let written = completions(&dir).unwrap();
        assert_eq!(written.len(), 3);
        for p in &written {
            let text = fs::read_to_string(p).unwrap();
            assert!(text.contains("check-config"), "{}", p.display());
            assert!(text.contains("deny-files"), "{}", p.display());
            assert!(!text.contains("generate"), "{}", p.display());
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
