//! The documentation shows only `connexa-http` commands that exist: every
//! `connexa-http ...` line of README.md and docs/*.md names real
//! subcommands, options and values (checked against `--help`).

#[path = "../../tests/src/doc_commands.rs"]
mod doc_commands;

use doc_commands::{check, commands_in, help_tree};

#[test]
fn every_documented_connexa_http_command_matches_its_help() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            files.push(p);
        }
    }
    let tree = help_tree(std::path::Path::new(env!("CARGO_BIN_EXE_connexa-http")));
    let mut checked = 0;
    let mut wrong = Vec::new();
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
        for cmd in commands_in(&text, &name, "connexa-http", "connexa-http") {
            checked += 1;
            if let Err(e) = check(&tree, "connexa-http", &cmd) {
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
    assert!(checked >= 10, "only {checked} commands found");
}
