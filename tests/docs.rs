//! The documentation names only what the repository has: every repository
//! path in README.md and docs/*.md, written in backticks or as a link,
//! exists. Needs no services.
//!
//! A path is a backticked word of path characters that has a `/` (and does
//! not start with one: those are API routes such as `/createQueue`) or ends
//! in a file extension the repository uses; URLs, MIME types and address
//! ranges are not paths. Backticked paths are relative to the repository
//! root, links to the file that holds them. Fenced code blocks are left out.

use std::path::{Path, PathBuf};

/// Extensions a bare file name (no `/`) must end in to count as a path.
const EXTENSIONS: &[&str] = &[
    "rs", "md", "toml", "sh", "yml", "yaml", "json", "png", "js", "css", "html", "lock", "py",
    "txt", "config", "example",
];
/// Made by running the project, never committed.
const GENERATED: &[&str] = &[".env", "bench-results.json", "target/", ".data/", ".venv/"];
/// First segments that make a `a/b` word a MIME type, not a path.
const MIME_TYPES: &[&str] = &[
    "application",
    "text",
    "image",
    "audio",
    "video",
    "font",
    "multipart",
];

#[test]
fn every_repository_path_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);

    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable document");
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (line, reference) in references(&text) {
            let target = match &reference {
                Reference::Code(path) => root.join(path),
                Reference::Link(path) => file.parent().unwrap_or(root).join(path),
            };
            if !target.exists() {
                missing.push(format!("{name}:{line}: {reference:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths named in the docs that the repository does not have:\n{}",
        missing.join("\n")
    );
}

/// The README's Configuration section names every variable `.env.example`
/// lists, so a setting cannot be added without being documented.
#[test]
fn the_readme_configures_every_variable_of_env_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let configuration: String = readme
        .split("\n## ")
        .find(|section| section.starts_with("Configuration\n"))
        .expect("README.md has a `## Configuration` section")
        .to_owned();
    let example = std::fs::read_to_string(root.join(".env.example")).expect(".env.example");
    let missing: Vec<&str> = example
        .lines()
        .filter_map(|line| line.trim_start_matches('#').split_once('='))
        .map(|(name, _)| name.trim())
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .filter(|name| !configuration.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's Configuration does not name {missing:?}"
    );
}

#[derive(Debug)]
enum Reference {
    Code(String),
    Link(String),
}

/// The repository paths a Markdown text names, with their line numbers.
fn references(text: &str) -> Vec<(usize, Reference)> {
    let mut found = Vec::new();
    let mut fenced = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let number = index + 1;
        for span in code_spans(line) {
            for word in span.split_whitespace() {
                if let Some(path) = repository_path(word) {
                    found.push((number, Reference::Code(path)));
                }
            }
        }
        for target in link_targets(line) {
            let path = target.split('#').next().unwrap_or("");
            if !path.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                found.push((number, Reference::Link(path.to_owned())));
            }
        }
    }
    found
}

/// The text between single backticks (a double-backtick span is read the
/// same way: its inner text is between backticks too).
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// The targets of `[text](target)` and `![alt](target)`.
fn link_targets(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &line[at + 2..];
            rest.find(')').map(|end| rest[..end].trim())
        })
        .collect()
}

/// The word as a repository path, when it is one.
fn repository_path(word: &str) -> Option<String> {
    let word = word.trim_end_matches([',', ';', ')', '.', ':']);
    let word = word.strip_prefix("./").unwrap_or(word);
    let path_chars = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if word.is_empty() || !path_chars || word.starts_with('/') || word.contains("//") {
        return None;
    }
    let generated = GENERATED.iter().any(|generated| {
        word == *generated || (generated.ends_with('/') && word.starts_with(generated))
    });
    if generated {
        return None;
    }
    if word.ends_with('/') {
        return Some(word.to_owned());
    }
    let segments: Vec<&str> = word.split('/').filter(|s| !s.is_empty()).collect();
    if segments.len() > 1 {
        let numeric = segments
            .iter()
            .any(|s| s.chars().all(|c| c.is_ascii_digit() || c == '.'));
        let mime = MIME_TYPES.contains(&segments[0]);
        return (!numeric && !mime).then(|| word.to_owned());
    }
    match word.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && EXTENSIONS.contains(&ext) => Some(word.to_owned()),
        _ => None,
    }
}

#[test]
fn paths_are_told_from_routes_urls_and_addresses() {
    for word in [
        "src/configuration.rs",
        "./run.sh",
        "Cargo.toml",
        ".env.example",
        "deploy/",
        "tests/api/try_it.rs,",
    ] {
        assert!(repository_path(word).is_some(), "{word} is a path");
    }
    for word in [
        "/createQueue",
        "application/json",
        "172.16/12",
        "127/8",
        "http://127.0.0.1:8080/",
        "<queue>.dlq",
        "x-workerrmq-attempt",
        "user:password@",
        ".env",
        "target/screenshots/",
        "id.timestamp.body",
    ] {
        assert!(repository_path(word).is_none(), "{word} is not a path");
    }
}
