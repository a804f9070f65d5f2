//! The commands the documentation shows, checked against the binaries' own
//! `--help`: every subcommand path must exist, its `--help` must succeed, and
//! every `--option` and every `a|b|c` value list the line names must appear
//! in that help. Included with `#[path]` by the CLI's and the HTTP server's
//! docs tests (each package can run only its own binary).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A command line found in a documentation file.
#[derive(Debug, Clone)]
pub struct DocCommand {
    /// File and line, for the failure message.
    pub at: String,
    /// The words after the binary's name.
    pub words: Vec<String>,
}

/// Every command line of `bin` in `markdown`: lines of fenced code blocks and
/// inline code spans (headings too) that run `bin` (also as
/// `cargo run ... -p <package> -- ARGS`).
pub fn commands_in(markdown: &str, file: &str, bin: &str, package: &str) -> Vec<DocCommand> {
    let mut found = Vec::new();
    let mut fenced = false;
    for (n, line) in markdown.lines().enumerate() {
        let at = format!("{file}:{}", n + 1);
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let texts: Vec<&str> = if fenced {
            vec![line]
        } else {
            // Inline code spans: the odd pieces between backticks.
            line.split('`').skip(1).step_by(2).collect()
        };
        for text in texts {
            let text = text.split(" #").next().unwrap_or(text);
            for seg in split_segments(text) {
                if let Some(words) = command_words(seg, bin, package) {
                    found.push(DocCommand {
                        at: at.clone(),
                        words,
                    });
                }
            }
        }
    }
    found
}

fn split_segments(text: &str) -> Vec<&str> {
    let mut segs = vec![text];
    for sep in [" && ", " || ", " | ", "; ", "$(", " & "] {
        segs = segs.into_iter().flat_map(|s| s.split(sep)).collect();
    }
    segs
}

fn command_words(seg: &str, bin: &str, package: &str) -> Option<Vec<String>> {
    let mut words: Vec<&str> = seg.split_whitespace().collect();
    // Prompts, sudo and environment assignments before the command.
    while let Some(w) = words.first() {
        let assignment = w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        if *w == "$" || *w == "sudo" || assignment {
            words.remove(0);
        } else {
            break;
        }
    }
    let first = *words.first()?;
    if first == "cargo" && words.get(1) == Some(&"run") {
        let dashes = words.iter().position(|w| *w == "--")?;
        let p = words.iter().position(|w| *w == "-p" || *w == "--package")?;
        if words.get(p + 1) != Some(&package) {
            return None;
        }
        return Some(words[dashes + 1..].iter().map(|w| w.to_string()).collect());
    }
    let name = first.rsplit('/').next().unwrap_or(first);
    if name != bin {
        return None;
    }
    Some(words[1..].iter().map(|w| w.to_string()).collect())
}

/// The subcommand tree of a binary, read from its `--help` output.
#[derive(Debug, Default)]
pub struct HelpTree {
    /// `--help` of this command.
    pub help: String,
    /// Its subcommands.
    pub subs: BTreeMap<String, HelpTree>,
}

/// Reads the tree of `exe` by running `exe [PATH] --help` recursively.
pub fn help_tree(exe: &Path) -> HelpTree {
    fn read(exe: &Path, path: &[String]) -> HelpTree {
        let out = Command::new(exe)
            .args(path)
            .arg("--help")
            .env("NO_COLOR", "1")
            .env_remove("CONNEXA_DB")
            .env_remove("CONNEXA_CONFIG")
            .output()
            .expect("run the binary");
        assert!(
            out.status.success(),
            "`{} {} --help` failed: {}",
            exe.display(),
            path.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut subs = BTreeMap::new();
        let mut in_commands = false;
        for line in help.lines() {
            if line.starts_with("Commands:") {
                in_commands = true;
                continue;
            }
            if in_commands {
                if line.trim().is_empty() {
                    break;
                }
                // "  name   description" (a subcommand line is indented by two).
                if let Some(rest) = line.strip_prefix("  ") {
                    if rest.starts_with(' ') {
                        continue; // a wrapped description
                    }
                    let name = rest.split_whitespace().next().unwrap_or("");
                    if !name.is_empty() && name != "help" {
                        let mut p = path.to_vec();
                        p.push(name.to_owned());
                        subs.insert(name.to_owned(), read(exe, &p));
                    }
                }
            }
        }
        HelpTree { help, subs }
    }
    read(exe, &[])
}

/// Global options taking a value, skipped before the subcommand.
const VALUE_OPTIONS: &[&str] = &["--db", "--config", "--output"];

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `true` if `help` has `word` as a whole word.
fn mentions(help: &str, word: &str) -> bool {
    help.match_indices(word).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + word.len()..].chars().next();
        let edge = |c: Option<char>| {
            c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        };
        edge(before) && edge(after)
    })
}

/// Checks one documented command against the tree; the error says what in
/// the line differs from `--help`.
pub fn check(tree: &HelpTree, bin: &str, cmd: &DocCommand) -> Result<(), String> {
    let line = format!("{}: `{bin} {}`", cmd.at, cmd.words.join(" "));
    let mut node = tree;
    let mut path: Vec<String> = Vec::new();
    let mut words = cmd.words.iter().map(String::as_str).peekable();
    // Descend: options (and the values of the global ones) are skipped,
    // the next word must name a subcommand while there are any.
    while !node.subs.is_empty() {
        let Some(w) = words.next() else {
            return Ok(()); // `connexa nodes` alone prints its help.
        };
        if w.starts_with('-') {
            let opt = w.split('=').next().unwrap_or(w);
            if !mentions(&node.help, opt) {
                return Err(format!(
                    "{line}: `{bin} {}` has no option {opt}",
                    path.join(" ")
                ));
            }
            if VALUE_OPTIONS.contains(&opt) && !w.contains('=') {
                words.next();
            }
            continue;
        }
        if w.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            return Ok(()); // `connexa SUBCOMMAND --help`: a placeholder.
        }
        let alternatives: Vec<&str> = w.split('|').collect();
        if !alternatives.iter().all(|a| is_word(a)) {
            return Err(format!(
                "{line}: `{w}` where a subcommand of `{bin} {}` is expected",
                path.join(" ")
            ));
        }
        for a in &alternatives {
            if !node.subs.contains_key(*a) {
                return Err(format!(
                    "{line}: `{bin} {}` has no subcommand {a} (it has: {})",
                    path.join(" "),
                    node.subs.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        path.push(alternatives[0].to_owned());
        node = &node.subs[alternatives[0]];
    }
    // The leaf: every option and value list the line names is in its help.
    for w in words {
        let w = w.trim_matches(|c| matches!(c, '[' | ']' | '(' | ')' | ',' | '.' | '"' | '\''));
        if let Some(opt) = w.strip_prefix("--") {
            let name = opt.split(['=', '/']).next().unwrap_or(opt);
            if !is_word(name) {
                continue;
            }
            if !mentions(&node.help, &format!("--{name}")) {
                return Err(format!(
                    "{line}: `{bin} {} --help` has no --{name}",
                    path.join(" ")
                ));
            }
            // `--comment/--city/...`: each one.
            for more in opt.split('/').skip(1) {
                let more = more.trim_start_matches("--");
                if is_word(more) && !mentions(&node.help, &format!("--{more}")) {
                    return Err(format!(
                        "{line}: `{bin} {} --help` has no --{more}",
                        path.join(" ")
                    ));
                }
            }
        } else if w.contains('|') {
            let values: Vec<&str> = w.split('|').collect();
            if values.iter().all(|v| is_word(v)) {
                for v in values {
                    if !mentions(&node.help, v) {
                        return Err(format!(
                            "{line}: `{bin} {} --help` does not list the value {v}",
                            path.join(" ")
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The exit-code table of docs/cli.md: `| N | name | meaning |` rows.
pub fn exit_code_table(markdown: &str) -> Vec<(u8, String)> {
    markdown
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // ["", N, name, meaning, ""]
            if cells.len() < 4 || !cells[0].is_empty() {
                return None;
            }
            let n: u8 = cells[1].parse().ok()?;
            Some((n, cells[2].to_owned()))
        })
        .collect()
}

/// The `Exit codes: 0 ok, 1 failure, ...` sentence of a `--help` text.
pub fn exit_codes_in_help(help: &str) -> Vec<(u8, String)> {
    let Some(start) = help.find("Exit codes:") else {
        return Vec::new();
    };
    let text: String = help[start + "Exit codes:".len()..]
        .split(" (")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    text.trim_end_matches('.')
        .split(", ")
        .filter_map(|item| {
            let (n, name) = item.trim().split_once(' ')?;
            Some((n.parse().ok()?, name.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_in_fences_spans_and_cargo_run() {
        let md = "x `connexa nodes show 7` y `connexa-http serve`\n```\n$ CONNEXA_DB=a connexa stats # c\ncargo run -q -p connexa-cli -- demo\nconnexa import f && connexa test light --all\n```\n";
        let c: Vec<String> = commands_in(md, "f", "connexa", "connexa-cli")
            .into_iter()
            .map(|c| c.words.join(" "))
            .collect();
        assert_eq!(
            c,
            [
                "nodes show 7",
                "stats",
                "demo",
                "import f",
                "test light --all"
            ]
        );
    }

    #[test]
    fn a_missing_subcommand_option_or_value_is_reported() {
        let leaf = |help: &str| HelpTree {
            help: help.into(),
            subs: BTreeMap::new(),
        };
        let mut nodes = HelpTree {
            help: "--db".into(),
            ..Default::default()
        };
        nodes
            .subs
            .insert("show".into(), leaf("Options:\n  --reveal  show\n"));
        let mut root = HelpTree {
            help: "--db --output".into(),
            ..Default::default()
        };
        root.subs.insert("nodes".into(), nodes);
        root.subs.insert(
            "export".into(),
            leaf("--format <F> [possible values: csv, json]"),
        );
        let cmd = |s: &str| DocCommand {
            at: "t".into(),
            words: s.split_whitespace().map(String::from).collect(),
        };
        assert!(check(&root, "c", &cmd("--db x nodes show 7 [--reveal]")).is_ok());
        assert!(check(&root, "c", &cmd("nodes add 1")).is_err());
        assert!(check(&root, "c", &cmd("nodes show 7 --force")).is_err());
        assert!(check(&root, "c", &cmd("export --format csv|json")).is_ok());
        assert!(check(&root, "c", &cmd("export --format csv|xml")).is_err());
    }

    #[test]
    fn exit_codes_are_read_from_the_table_and_the_help() {
        let md = "| code | name | meaning |\n|---|---|---|\n| 0 | ok | success |\n| 6 | not found | x |\n";
        assert_eq!(
            exit_code_table(md),
            [(0, "ok".to_owned()), (6, "not found".to_owned())]
        );
        let help = "Exit codes: 0 ok, 1 failure,\n6 not found (docs/cli.md).";
        assert_eq!(
            exit_codes_in_help(help),
            [
                (0, "ok".to_owned()),
                (1, "failure".to_owned()),
                (6, "not found".to_owned())
            ]
        );
    }
}
