use clap::Parser;
use relay_router::RouterArgs;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = RouterArgs::parse();
    relay_core::cli::init_tracing(args.log_format);
    relay_router::run(args, relay_core::cli::shutdown_signal()).await
}
