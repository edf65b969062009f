//! `zerodax`: a virtio-fs daemon whose DAX window maps file holes as the zero page.

mod probe;
mod probe_virtio;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zerodax::{mount, serve};

#[derive(Debug, Parser)]
#[command(name = "zerodax", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve SHARED_DIR at MOUNTPOINT through /dev/fuse, in the foreground.
    Mount(mount::MountArgs),
    /// Map FILE through a DAX window in this process and report how its pages are backed.
    Probe(probe::ProbeArgs),
    /// Serve SHARED_DIR as a vhost-user virtio-fs device backend (in place of virtiofsd).
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Mount(args) => mount::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Serve(args) => serve::run(args),
    }
}
