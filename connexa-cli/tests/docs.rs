//! The documentation shows only commands that exist: every `connexa ...`
//! line of README.md and docs/*.md names real subcommands, options and
//! values (checked against `--help`), and docs/cli.md's exit-code table is
//! the one `connexa --help` prints.

#[path = "../../tests/src/doc_commands.rs"]
mod doc_commands;

use doc_commands::{check, commands_in, exit_code_table, exit_codes_in_help, help_tree};

fn docs() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    let mut md: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    md.sort();
    files.extend(md);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn every_documented_connexa_command_matches_its_help() {
    let tree = help_tree(&assert_cmd::cargo::cargo_bin("connexa"));
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (file, text) in docs() {
        for cmd in commands_in(&text, &file, "connexa", "connexa-cli") {
            checked += 1;
            if let Err(e) = check(&tree, "connexa", &cmd) {
                wrong.push(e);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} documented commands differ from --help:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // README and docs/cli.md show far more than this; fewer means the
    // extraction broke, not that the docs got shorter.
    assert!(checked > 60, "only {checked} commands found");
}

#[test]
fn the_exit_codes_of_docs_cli_md_are_the_ones_connexa_help_prints() {
    let (_, cli_md) = docs()
        .into_iter()
        .find(|(f, _)| f.ends_with("cli.md"))
        .unwrap();
    let table = exit_code_table(&cli_md);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("connexa"))
        .arg("--help")
        .output()
        .unwrap();
    let help = exit_codes_in_help(&String::from_utf8_lossy(&out.stdout));
    assert!(table.len() >= 7, "{table:?}");
    assert_eq!(table, help, "docs/cli.md's table vs `connexa --help`");
}
