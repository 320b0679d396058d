//! What the examples share: their error type and the line they print for
//! each progress event.

use std::error::Error;

use relay_core::Event;

/// Any error of the examples.
pub type AnyError = Box<dyn Error + Send + Sync>;

/// One event as a line: `seq  stage  status  progress%  data`.
pub fn format_event(e: &Event) -> String {
    format!(
        "{:>3}  {:<9}  {:<9}  {:>3}%  {}",
        e.seq,
        e.stage.as_str(),
        e.status.to_string(),
        e.progress.unwrap_or(0),
        e.data
    )
}
