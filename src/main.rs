//! The `orga-proxy` binary: parse the command line and hand it to the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    orga_proxy::cli::run(orga_proxy::cli::Cli::parse())
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
