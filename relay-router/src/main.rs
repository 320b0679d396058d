use clap::Parser;
use relay_router::RouterArgs;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = RouterArgs::parse();
    args.runtime.runtime()?.block_on(async {
        // Dropped after `run`: sends the last spans.
        let _telemetry = relay_core::cli::init_tracing(args.log_format, "relay-router");
        relay_router::run(args, relay_core::cli::shutdown_signal()).await
    })
}
