//! The documentation's shape: README.md is the front door (at most 300 lines, depth in `docs/`),
//! and every relative link in README.md, BENCHMARKS.md and `docs/` points at a file that exists.

use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_readme_is_at_most_300_lines() {
    let lines = std::fs::read_to_string(repo().join("README.md")).unwrap().lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; move depth into docs/ (see docs/*.md)");
}

#[test]
fn relative_links_point_at_files_that_exist() {
    let mut files = vec![repo().join("README.md"), repo().join("BENCHMARKS.md")];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        for target in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") || path.contains(' ') {
                continue;
            }
            assert!(dir.join(path).exists(), "{}: link to {target}, which does not exist", file.display());
        }
    }
}
