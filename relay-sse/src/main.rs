//! `relay-sse`: the SSE gateway binary. Parses flags and calls [`relay_sse::run`].

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = relay_sse::Config::parse();
    config.runtime.runtime()?.block_on(async {
        // Dropped after `run`: sends the last spans.
        let _telemetry = relay_sse::init_tracing(config.log_format, "relay-sse");
        relay_sse::run(config).await?;
        Ok(())
    })
}
