//! The shared RabbitMQ broker (127.0.0.1:5672) that tests and the load
//! tool use: every user declares its queues under a prefix of its own and
//! deletes them when done, so runs neither leave queues behind nor consume
//! another user's messages (a default prefix like `scan` would).

use std::process::Command;

/// A queue prefix unique to this process and `tag`.
pub fn unique_prefix(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

/// Deletes every queue whose name starts with `prefix` followed by `.`;
/// returns how many were deleted. Uses `rabbitmqctl`; when it cannot run,
/// nothing is deleted (0). Stop the processes that declared the queues
/// first, or they declare them again.
pub fn delete_queues_with_prefix(prefix: &str) -> usize {
    let Ok(out) = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .output()
    else {
        return 0;
    };
    let wanted = format!("{prefix}.");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(&wanted))
        .filter(|name| {
            Command::new("rabbitmqctl")
                .args(["delete_queue", "-q", name])
                .status()
                .is_ok_and(|s| s.success())
        })
        .count()
}
