//! `pipeline-scan`: scan API, stage workers and DLQ tool. See `pipeline_scan::app`.

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = pipeline_scan::app::Cli::parse();
    // Dropped after `run`: sends the last spans.
    let _telemetry = relay_core::cli::init_tracing(cli.log_format, cli.service_name());
    pipeline_scan::app::run(cli).await?;
    Ok(())
}
