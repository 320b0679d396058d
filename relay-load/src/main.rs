//! `relay-load`: see the library docs (`relay_load`).

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = relay_load::Cli::parse();
    let _telemetry = relay_core::cli::init_tracing_with_default(
        relay_core::cli::LogFormat::Text,
        "warn",
        "relay-load",
    );
    relay_load::run(cli).await?;
    Ok(())
}
