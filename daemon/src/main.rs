//! `zerodax`: a virtio-fs daemon whose DAX window maps file holes as the zero page.

mod bench;
mod probe;
mod probe_args;
mod probe_virtio;
mod report;

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
    /// Read one sparse file through the window, plain mmap, read(2) and virtio-fs peers, cold
    /// and warm, with memory cost, in one run.
    ///
    /// Without --dir (as root) the file is made on an ext4 image loop-mounted in a temp dir
    /// for the run, unmounted and removed afterwards (on error too), so allocation and hole
    /// behaviour do not depend on where the bench runs.
    Bench(bench::BenchArgs),
    /// Serve SHARED_DIR at MOUNTPOINT through /dev/fuse, in the foreground.
    Mount(mount::MountArgs),
    /// Map FILE through a DAX window in this process and report how its pages are backed.
    Probe(probe_args::ProbeArgs),
    /// Serve SHARED_DIR as a vhost-user virtio-fs device backend (in place of virtiofsd).
    Serve(Box<serve::ServeArgs>),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Serve(args) => serve::run(*args),
    }
}
