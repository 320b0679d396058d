use clap::Parser;
use relay_router::ctl::{run, CtlArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = CtlArgs::parse();
    let _telemetry = relay_core::cli::init_tracing(args.log_format, "relayctl");
    let mut out = std::io::stdout();
    run(args, &mut out).await
}
