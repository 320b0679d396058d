//! The `chaos` flags: the run's length and rate, the fault schedule, the
//! deployment's shape and the workers' simulated latencies. Kept apart so the
//! CLI surface of the scenario reads in one place.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

/// Redis AOF fsync policy of the spawned server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every write is on disk before Redis answers: a `kill -9` loses
    /// nothing acknowledged, so the checker can be exact.
    Always,
    /// fsync once a second: a `kill -9` may lose the last second of
    /// acknowledged writes (expect violations after Redis restarts).
    Everysec,
}

/// `chaos` flags.
#[derive(Clone, Debug, Args)]
pub struct ChaosArgs {
    /// Length of the fault phase, seconds (scans are submitted meanwhile).
    #[arg(long, env = "RELAY_LOAD_CHAOS_SECS", default_value_t = 600)]
    pub secs: u64,
    /// Scans submitted per second during the fault phase.
    #[arg(long, env = "RELAY_LOAD_CHAOS_RATE", default_value_t = 5.0)]
    pub rate: f64,
    /// After the fault phase, how long jobs may still finish, seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_DRAIN_SECS", default_value_t = 180)]
    pub drain_secs: u64,
    /// How long a scan's submission is retried (same idempotency key), seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_SUBMIT_SECS", default_value_t = 60)]
    pub submit_secs: u64,
    /// `relay-router` processes (one consumer group, distinct consumers).
    #[arg(long, env = "RELAY_LOAD_CHAOS_ROUTERS", default_value_t = 2)]
    pub routers: usize,
    /// `relay-sse` gateways (clients alternate between them).
    #[arg(long, env = "RELAY_LOAD_CHAOS_GATEWAYS", default_value_t = 2)]
    pub gateways: usize,
    /// `pipeline-scan worker` processes.
    #[arg(long, env = "RELAY_LOAD_CHAOS_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Mean seconds between process kills (each interval ±50 %; 0: none).
    #[arg(long, env = "RELAY_LOAD_CHAOS_KILL_EVERY_SECS", default_value_t = 5.0)]
    pub kill_every_secs: f64,
    /// Longest pause between a kill and the restart, milliseconds.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_RESTART_DELAY_MS",
        default_value_t = 1500
    )]
    pub restart_delay_ms: u64,
    /// Mean seconds between Redis faults (client kills, write refusals,
    /// pauses), each interval ±50 % (0: none; restarts still happen).
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_REDIS_FAULT_EVERY_SECS",
        default_value_t = 8.0
    )]
    pub redis_fault_every_secs: f64,
    /// redis-server `kill -9` + restarts, spread evenly over the fault phase.
    #[arg(long, env = "RELAY_LOAD_CHAOS_REDIS_RESTARTS", default_value_t = 4)]
    pub redis_restarts: u32,
    /// Longest time redis-server stays down during a restart, milliseconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_REDIS_DOWN_MS", default_value_t = 2000)]
    pub redis_down_ms: u64,
    /// Mean seconds between RabbitMQ connection closes (0: none).
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_AMQP_CLOSE_EVERY_SECS",
        default_value_t = 30.0
    )]
    pub amqp_close_every_secs: f64,
    /// AOF fsync policy of the spawned redis-server.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_APPENDFSYNC",
        value_enum,
        default_value = "always"
    )]
    pub appendfsync: Fsync,
    /// The routers' `--claim-idle-ms` (how soon a killed router's pending
    /// entries are claimed by the other).
    #[arg(long, env = "RELAY_LOAD_CHAOS_CLAIM_IDLE_MS", default_value_t = 2000)]
    pub claim_idle_ms: u64,
    /// The workers' vision simulator latency, `MS±JITTER`.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_SIM_LATENCY_MS",
        default_value = "300±150"
    )]
    pub sim_latency_ms: String,
    /// The workers' extra latency per stage.
    #[arg(
        long,
        env = "RELAY_LOAD_CHAOS_SIM_STAGE_LATENCY_MS",
        default_value = "rule=30±10,answer=400±200,reward=30±10"
    )]
    pub sim_stage_latency_ms: String,
    /// Attempts per stage before a job fails (pipeline-scan `--max-attempts`).
    #[arg(long, env = "RELAY_LOAD_CHAOS_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// First stage retry delay, ms (pipeline-scan `--backoff-ms`).
    #[arg(long, env = "RELAY_LOAD_CHAOS_BACKOFF_MS", default_value_t = 500)]
    pub backoff_ms: u64,
    /// Longest stage retry delay, ms (pipeline-scan `--max-backoff-ms`).
    #[arg(long, env = "RELAY_LOAD_CHAOS_MAX_BACKOFF_MS", default_value_t = 4000)]
    pub max_backoff_ms: u64,
    /// The gateways' heartbeat interval, seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_HEARTBEAT_SECS", default_value_t = 2.0)]
    pub heartbeat_secs: f64,
    /// A client that reads nothing (not even a heartbeat) this long
    /// reconnects (counted as an idle reconnect), seconds.
    #[arg(long, env = "RELAY_LOAD_CHAOS_IDLE_SECS", default_value_t = 15.0)]
    pub idle_secs: f64,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "RELAY_LOAD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Seed of the fault schedule (random when absent; printed either way).
    #[arg(long, env = "RELAY_LOAD_CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Keep the processes' logs, the fault log and the findings here
    /// (default: a temporary directory, removed when the run passes).
    #[arg(long, env = "RELAY_LOAD_CHAOS_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
}
