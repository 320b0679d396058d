//! The `pipeline-scan` binary as a library: flags (every one also from env
//! `RELAY_*`), and [`run`] for the `api`, `worker`, `dlq` and `demo`
//! subcommands.
//!
//! The building blocks are public so other entry points (the all-in-one
//! demo) compose the same parts: [`scan_models`] (models from flags), and
//! from [`crate::wiring`] (re-exported here) [`start_in_process`] (engine +
//! in-process workers) and [`metrics_router`]; [`ScanApi`] is the HTTP routes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use relay_core::cli::{ConnectionArgs, LogFormat};
use relay_core::http_serve::{self, HttpServeArgs, ServeMetrics};
use relay_core::Publisher;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiConfig, ScanApi};
use crate::metrics::Metrics;
use crate::pipeline::{JobStore, RetryPolicy};
use crate::scan::openai::{OpenAiClient, OpenAiConfig};
use crate::scan::{
    self, AnswerModel, LatencyDist, OpenAiAnswer, OpenAiVision, RuleSet, ScanModels,
    SimulatedAnswer, SimulatedVision, Taxonomy, TemplateAnswer, VisionModel,
};
use crate::transport::amqp::{AmqpConfig, AmqpProducer, AmqpWorker, Dlq, Topology};
pub use crate::wiring::{
    api_ops_router, metrics_router, scan_engine, start_in_process, ApiReadiness, AppError,
    HTTP_METRICS_PREFIX,
};

/// `pipeline-scan`: the scan pipeline's API, workers and DLQ tool.
#[derive(Debug, Parser)]
#[command(name = "pipeline-scan", version, about)]
pub struct Cli {
    /// Backend, profile and shards.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Broker and retry settings.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Log format.
    #[arg(
        long,
        env = "RELAY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The default `service.name` of this process's spans (see
    /// `relay_core::telemetry`): `pipeline-scan-` and the subcommand.
    pub fn service_name(&self) -> &'static str {
        match self.command {
            Command::Api(_) => "pipeline-scan-api",
            Command::Worker(_) => "pipeline-scan-worker",
            Command::Dlq { .. } => "pipeline-scan-dlq",
            Command::Demo(_) => "pipeline-scan-demo",
        }
    }
}

/// Settings shared by API, worker and DLQ tool (they must agree on the topology).
#[derive(Clone, Debug, Args)]
pub struct PipelineArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "RELAY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Queue name prefix (`scan` → `scan.vision`, `scan.rule`, …, `scan.dlq`).
    #[arg(long, env = "RELAY_QUEUE_PREFIX", default_value = "scan")]
    pub queue_prefix: String,
    /// Attempts per stage before the job fails and the step is dead-lettered.
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry delay in ms (doubles per attempt).
    #[arg(long, env = "RELAY_BACKOFF_MS", default_value_t = 1000)]
    pub backoff_ms: u64,
    /// Longest retry delay in ms.
    #[arg(long, env = "RELAY_MAX_BACKOFF_MS", default_value_t = 30000)]
    pub max_backoff_ms: u64,
}

impl PipelineArgs {
    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base_delay: Duration::from_millis(self.backoff_ms.max(1)),
            max_delay: Duration::from_millis(self.max_backoff_ms.max(self.backoff_ms).max(1)),
        }
    }

    /// The broker config.
    pub fn amqp(&self) -> AmqpConfig {
        AmqpConfig {
            prefix: self.queue_prefix.clone(),
            ..AmqpConfig::new(self.amqp_url.clone())
        }
    }

    /// The scan topology.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.queue_prefix, &crate::scan::STAGE_NAMES, &self.retry())
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the scan HTTP API (enqueues to RabbitMQ).
    Api(ApiArgs),
    /// Run the stage workers (consumes from RabbitMQ).
    Worker(WorkerArgs),
    /// Inspect, replay or purge the dead-letter queue.
    Dlq {
        /// The action.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Everything in one process on the in-process memory backend (router,
    /// SSE gateway, scan API, workers with simulated models) and a browser
    /// page at `/`. Needs no Redis and no RabbitMQ; `--redis-url` and the
    /// broker flags are ignored.
    Demo(DemoArgs),
}

/// `demo` flags.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Listen address (page, API and SSE routes).
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Simulated vision latency, `MS` or `MS±JITTER` (also `MS+-JITTER`).
    #[arg(long, env = "RELAY_DEMO_VISION_LATENCY_MS", default_value = "1500±500")]
    pub vision_latency_ms: LatencyDist,
    /// Simulated answer latency, `MS` or `MS±JITTER`.
    #[arg(long, env = "RELAY_DEMO_ANSWER_LATENCY_MS", default_value = "2000±500")]
    pub answer_latency_ms: LatencyDist,
    /// Rules directory (own or eco2 format). Default: the embedded dataset.
    #[arg(long, env = "RELAY_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Require stream tokens (the API issues them, the gateway checks them).
    #[arg(long, env = "RELAY_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// Listener limits (`--http-*`).
    #[command(flatten)]
    pub http: HttpServeArgs,
}

/// `api` flags.
#[derive(Clone, Debug, Args)]
pub struct ApiArgs {
    /// Listen address.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Largest request body in bytes.
    #[arg(long, env = "RELAY_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// Only accept image URLs on these hosts (and subdomains). Comma-separated.
    #[arg(long, env = "RELAY_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Accept private, loopback and link-local image hosts.
    #[arg(long, env = "RELAY_ALLOW_PRIVATE_URLS")]
    pub allow_private_urls: bool,
    /// Accepted `model` values. Comma-separated.
    #[arg(
        long,
        env = "RELAY_MODELS",
        value_delimiter = ',',
        default_value = "gpt-4o-mini,gpt-4o,simulated"
    )]
    pub models: Vec<String>,
    /// HMAC secret shared with `relay-sse --auth-secret`: submissions return
    /// a stream token for their job (`token`, and `stream_url` with `?token=`).
    #[arg(long, env = "RELAY_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// Lifetime of issued stream tokens, seconds.
    #[arg(long, env = "RELAY_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// How long an idempotency key is remembered, seconds.
    #[arg(long, env = "RELAY_IDEMPOTENCY_TTL_SECS", default_value_t = 3600)]
    pub idempotency_ttl_secs: u64,
    /// How long a submission with an idempotency key may take before a
    /// retry with the same key takes it over (it was abandoned: the API
    /// died mid-submit), seconds. Longer than the slowest enqueue.
    #[arg(
        long,
        env = "RELAY_IDEMPOTENCY_PENDING_LEASE_SECS",
        default_value_t = 10
    )]
    pub idempotency_pending_lease_secs: u64,
    /// Listener limits (`--http-*`).
    #[command(flatten)]
    pub http: HttpServeArgs,
}

impl ApiArgs {
    /// The API config.
    pub fn config(&self) -> ApiConfig {
        ApiConfig {
            body_limit: self.body_limit,
            allowed_hosts: self.allowed_hosts.clone(),
            allow_private_hosts: self.allow_private_urls,
            models: self.models.clone(),
            auth_secret: self
                .auth_secret
                .as_ref()
                .filter(|s| !s.is_empty())
                .map(|s| s.clone().into_bytes()),
            token_ttl: Duration::from_secs(self.token_ttl_secs.max(1)),
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs.max(1)),
            idempotency_pending_lease: Duration::from_secs(
                self.idempotency_pending_lease_secs.max(1),
            ),
            ..ApiConfig::default()
        }
    }
}

/// Which vision implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VisionKind {
    /// The deterministic simulator (no model).
    Simulated,
    /// An OpenAI-compatible API.
    Openai,
}

/// Which answer implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AnswerKind {
    /// The deterministic template composer.
    Template,
    /// An OpenAI-compatible API.
    Openai,
}

/// Model and data flags (worker and demo).
#[derive(Clone, Debug, Args)]
pub struct ModelArgs {
    /// Vision implementation.
    #[arg(long, env = "RELAY_VISION", value_enum, default_value = "simulated")]
    pub vision: VisionKind,
    /// Simulator latency, `MS` or `MS±JITTER` (also `MS+-JITTER`).
    #[arg(long, env = "RELAY_SIM_LATENCY_MS", default_value = "4500±1500")]
    pub sim_latency_ms: LatencyDist,
    /// Answer implementation.
    #[arg(long, env = "RELAY_ANSWER", value_enum, default_value = "template")]
    pub answer: AnswerKind,
    /// Latency added to the template answer (the answer simulator), `MS` or
    /// `MS±JITTER`; `0`: none.
    #[arg(long, env = "RELAY_ANSWER_LATENCY_MS", default_value = "0")]
    pub answer_latency_ms: LatencyDist,
    /// OpenAI-compatible base URL.
    #[arg(
        long,
        env = "RELAY_OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,
    /// Default model.
    #[arg(long, env = "RELAY_OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub openai_model: String,
    /// API key.
    #[arg(long, env = "RELAY_OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Per-request timeout, seconds.
    #[arg(long, env = "RELAY_OPENAI_TIMEOUT_SECS", default_value_t = 30)]
    pub openai_timeout_secs: u64,
    /// Rules directory (own or eco2 format). Default: the embedded dataset.
    #[arg(long, env = "RELAY_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Taxonomy file (`item_class_list.yaml` format). Default: embedded.
    #[arg(long, env = "RELAY_TAXONOMY", requires = "situation_tags")]
    pub taxonomy: Option<PathBuf>,
    /// Situation tags file (`situation_tags.yaml` format). Default: embedded.
    #[arg(long, env = "RELAY_SITUATION_TAGS", requires = "taxonomy")]
    pub situation_tags: Option<PathBuf>,
}

/// `worker` flags.
#[derive(Clone, Debug, Args)]
pub struct WorkerArgs {
    /// Models and data.
    #[command(flatten)]
    pub models: ModelArgs,
    /// Prometheus `/metrics` (and `/healthz`) address.
    #[arg(long, env = "RELAY_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: SocketAddr,
    /// Prefetch (= concurrency) per stage.
    #[arg(long, env = "RELAY_PREFETCH", default_value_t = 8)]
    pub prefetch: u16,
    /// Per-stage prefetch, `stage=N`, comma-separated (e.g. `vision=32,reward=4`).
    #[arg(long, env = "RELAY_STAGE_PREFETCH", value_delimiter = ',')]
    pub stage_prefetch: Vec<String>,
    /// Default stage timeout, seconds.
    #[arg(long, env = "RELAY_STAGE_TIMEOUT_SECS", default_value_t = 60)]
    pub stage_timeout_secs: u64,
    /// Per-stage timeouts, `stage=SECS`, comma-separated.
    #[arg(long, env = "RELAY_STAGE_TIMEOUTS", value_delimiter = ',')]
    pub stage_timeouts: Vec<String>,
    /// Simulated extra latency per stage, `stage=MS` or `stage=MS±JITTER`,
    /// comma-separated (load tests, e.g. `rule=50±20,answer=6700±2000`).
    /// Reported with the simulator's own time as `model_ms` in each stage's
    /// `completed` event data.
    #[arg(long, env = "RELAY_SIM_STAGE_LATENCY_MS", value_delimiter = ',')]
    pub sim_stage_latency_ms: Vec<String>,
    /// Limits of the metrics listener (`--http-*`).
    #[command(flatten)]
    pub http: HttpServeArgs,
}

/// `dlq` actions.
#[derive(Clone, Debug, Subcommand)]
pub enum DlqAction {
    /// Print dead-lettered steps as JSON lines (they stay in the queue).
    List {
        /// At most this many.
        #[arg(long, env = "RELAY_LIMIT", default_value_t = 100)]
        limit: usize,
    },
    /// Re-run dead-lettered steps from their failed stage.
    Replay {
        /// At most this many.
        #[arg(long, env = "RELAY_LIMIT", default_value_t = 1000)]
        limit: usize,
    },
    /// Delete every dead-lettered step.
    Purge,
}

fn pairs<T: std::str::FromStr>(items: &[String], what: &str) -> Result<Vec<(String, T)>, AppError> {
    items
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (k, v) = s.split_once('=').ok_or_else(|| {
                AppError::Config(format!("{what}: expected stage=value, got {s:?}"))
            })?;
            let v = v
                .trim()
                .parse::<T>()
                .map_err(|_| AppError::Config(format!("{what}: invalid value in {s:?}")))?;
            Ok((k.trim().to_owned(), v))
        })
        .collect()
}

/// Builds the models from flags.
pub fn scan_models(args: &ModelArgs) -> Result<ScanModels, AppError> {
    let taxonomy = Arc::new(match (&args.taxonomy, &args.situation_tags) {
        (Some(items), Some(tags)) => Taxonomy::load(items, tags)?,
        _ => Taxonomy::default_dataset(),
    });
    let rules = Arc::new(match &args.rules_dir {
        Some(dir) => RuleSet::load_dir(dir)?,
        None => RuleSet::default_dataset(),
    });
    let client = || {
        let mut c = OpenAiConfig::new(
            args.openai_base_url.clone(),
            args.openai_model.clone(),
            args.openai_api_key.clone(),
        );
        c.timeout = Duration::from_secs(args.openai_timeout_secs.max(1));
        OpenAiClient::new(c)
    };
    let vision: Arc<dyn VisionModel> = match args.vision {
        VisionKind::Simulated => Arc::new(SimulatedVision::new(taxonomy, args.sim_latency_ms)),
        VisionKind::Openai => Arc::new(OpenAiVision::new(client()?, taxonomy)),
    };
    let answer: Arc<dyn AnswerModel> = match args.answer {
        AnswerKind::Template if args.answer_latency_ms != LatencyDist::ZERO => {
            Arc::new(SimulatedAnswer::new(args.answer_latency_ms))
        }
        AnswerKind::Template => Arc::new(TemplateAnswer),
        AnswerKind::Openai => Arc::new(OpenAiAnswer::new(client()?)),
    };
    Ok(ScanModels {
        vision,
        rules,
        answer,
        stage_latency: Vec::new(),
    })
}

/// Runs the parsed command until it finishes or a shutdown signal arrives.
pub async fn run(cli: Cli) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        relay_core::cli::shutdown_signal().await;
        signal.cancel();
    });
    run_until(cli, shutdown).await
}

/// Like [`run`], stopping when `shutdown` is cancelled (for tests).
pub async fn run_until(cli: Cli, shutdown: CancellationToken) -> Result<(), AppError> {
    if let Command::Demo(args) = &cli.command {
        let config = crate::demo::DemoConfig {
            listen: args.listen,
            keys: cli.connection.key_space(),
            vision_latency: args.vision_latency_ms,
            answer_latency: args.answer_latency_ms,
            rules: Arc::new(match &args.rules_dir {
                Some(dir) => RuleSet::load_dir(dir)?,
                None => RuleSet::default_dataset(),
            }),
            auth_secret: args
                .auth_secret
                .as_ref()
                .filter(|s| !s.is_empty())
                .map(|s| s.clone().into_bytes()),
            http: args.http.config(),
        };
        return crate::demo::run(config, shutdown).await;
    }
    let (backend, kv) = cli
        .connection
        .connect_with_kv_retry(Duration::from_secs(30))
        .await?;
    match &cli.command {
        Command::Api(args) => {
            let publisher = Publisher::new(
                backend.clone(),
                cli.connection.key_space(),
                crate::pipeline::publisher_config(),
            );
            let producer = Arc::new(AmqpProducer::new(
                cli.pipeline.amqp(),
                cli.pipeline.topology(),
            ));
            if let Err(e) = producer.connect().await {
                tracing::warn!(error = %e, "broker not reachable yet; submissions will retry the connection");
            }
            let http = ServeMetrics::new();
            let app = ScanApi::new(publisher, kv, producer.clone(), args.config())
                .router()
                .merge(api_ops_router(
                    http.clone(),
                    ApiReadiness::new(backend.clone(), producer.clone()),
                ));
            let listener = http_serve::bind(args.listen).await?;
            tracing::info!(addr = %listener.local_addr()?, "scan api listening");
            let stop = shutdown.clone();
            http_serve::serve(listener, app, args.http.config(), http, async move {
                stop.cancelled().await
            })
            .await;
            producer.close().await;
            Ok(())
        }
        Command::Worker(args) => {
            let mut models = scan_models(&args.models)?;
            models.stage_latency =
                pairs::<LatencyDist>(&args.sim_stage_latency_ms, "--sim-stage-latency-ms")?;
            let mut config = scan::engine_config();
            config.retry = cli.pipeline.retry();
            config.stage_timeout = Duration::from_secs(args.stage_timeout_secs.max(1));
            config.stage_timeouts = pairs::<u64>(&args.stage_timeouts, "--stage-timeouts")?
                .into_iter()
                .map(|(k, v)| (k, Duration::from_secs(v.max(1))))
                .collect();
            let metrics = Arc::new(Metrics::new());
            let engine = Arc::new(
                scan_engine(backend, kv, &cli.connection, &models, config)
                    .with_metrics(metrics.clone()),
            );
            let mut amqp = cli.pipeline.amqp();
            amqp.prefetch = args.prefetch.max(1);
            amqp.stage_prefetch = pairs::<u16>(&args.stage_prefetch, "--stage-prefetch")?;
            let worker = AmqpWorker::new(engine, amqp).with_metrics(metrics.clone());

            let listener = http_serve::bind(args.metrics_addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "worker metrics listening");
            let stop = shutdown.clone();
            let http = ServeMetrics::new();
            let limits = args.http.config();
            let server = tokio::spawn(async move {
                http_serve::serve(
                    listener,
                    metrics_router(metrics, http.clone()),
                    limits,
                    http,
                    async move { stop.cancelled().await },
                )
                .await
            });
            worker.run(shutdown.clone()).await;
            tracing::info!("worker stopped; in-flight steps finished");
            let _ = server.await;
            Ok(())
        }
        Command::Dlq { action } => {
            let dlq = Dlq::connect(&cli.pipeline.amqp(), cli.pipeline.topology()).await?;
            match action {
                DlqAction::List { limit } => {
                    for entry in dlq.list(*limit).await? {
                        println!("{}", serde_json::to_string(&entry).unwrap_or_default());
                    }
                }
                DlqAction::Replay { limit } => {
                    let engine_defaults = scan::engine_config();
                    let store =
                        JobStore::new(kv, engine_defaults.domain, engine_defaults.record_ttl);
                    let n = dlq.replay(&store, *limit).await?;
                    println!("replayed {n}");
                }
                DlqAction::Purge => {
                    let n = dlq.purge().await?;
                    println!("purged {n}");
                }
            }
            dlq.close().await;
            Ok(())
        }
        Command::Demo(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_reads_a_relay_env_var() {
        let missing = relay_core::cli::flags_without_env(&Cli::command(), "RELAY_");
        assert!(missing.is_empty(), "flags without RELAY_* env: {missing:?}");
    }

    #[test]
    fn every_listener_takes_the_http_limit_flags() {
        let limits = [
            "--http-head-timeout-secs",
            "0.5",
            "--http-idle-timeout-secs",
            "7",
            "--http-body-timeout-secs",
            "3",
            "--http-max-connections",
            "9",
        ];
        let want = relay_core::http_serve::ServeConfig {
            head_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(7),
            body_timeout: Duration::from_secs(3),
            max_connections: 9,
        };
        for sub in ["api", "worker", "demo"] {
            let argv = std::iter::once("pipeline-scan")
                .chain(std::iter::once(sub))
                .chain(limits);
            let cli = Cli::try_parse_from(argv).expect(sub);
            let got = match &cli.command {
                Command::Api(a) => a.http.config(),
                Command::Worker(w) => w.http.config(),
                Command::Demo(d) => d.http.config(),
                Command::Dlq { .. } => unreachable!("not parsed here"),
            };
            assert_eq!(got, want, "{sub}");
        }
    }
}
