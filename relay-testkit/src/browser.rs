//! Headless-Chromium tests: the shared `tests/browser/` harness (playwright-core
//! driving Debian's Chromium) and its prerequisites.
//!
//! The root package's gateway test, pipeline-scan's demo test and
//! relay-load's report test all drive a real browser; they share one
//! JavaScript harness (it stays in the workspace's `tests/browser/`, where
//! `scripts/test.sh` installs its `node_modules`) and these checks, which
//! fail loudly instead of skipping when the browser is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The harness directory (`tests/browser/` of the workspace).
pub fn browser_dir() -> PathBuf {
    // This crate sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Runs `npm ci` (or `npm install` when the lock file does not match) when
/// the harness's dependencies are missing, so a fresh clone works.
///
/// # Panics
/// When npm is missing or the install fails: a loud failure, never a skip.
pub fn ensure_node_modules() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let run = |args: &[&str]| {
        Command::new("npm")
            .args(args)
            .args(["--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(
        run(&["ci"]) || run(&["install"]),
        "cannot install the browser harness (npm ci in {}); is npm installed?",
        dir.display()
    );
}

/// The Chromium binary: `$CHROMIUM_BIN`, else `/usr/bin/chromium`.
///
/// # Panics
/// When it does not exist, saying how to install it.
pub fn chromium() -> String {
    let bin = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&bin).exists(),
        "{bin} is missing: install Debian's chromium (`apt-get install -y chromium`; scripts/test.sh does)"
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_directory_holds_the_scripts() {
        assert!(browser_dir().join("package.json").is_file());
        assert!(browser_dir().join("lib.mjs").is_file());
    }
}
