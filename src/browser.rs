//! Headless-Chromium tests: the shared `tests/browser/` harness (playwright-core
//! driving Debian's Chromium) and its prerequisites.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The harness directory (`tests/browser/` of the workspace).
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
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
