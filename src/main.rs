//! The `prerank` command line: a thin layer over the library (see `lib.rs` for the map).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prerank::server::{run, ServeConfig};
use prerank::snapshot::{LoadOptions, Snapshot};
use prerank::synth::{generate, SynthConfig};
use prerank_format::Dtype;

/// Coarse-ranking service for distilled two-tower (PFD) students.
#[derive(Debug, Parser)]
#[command(name = "prerank", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the models under --model-root over HTTP.
    Serve(ServeConfig),
    /// Verify a snapshot and publish a copy into a model directory atomically (prints the new
    /// version directory).
    Publish {
        /// The snapshot version directory to publish.
        src: PathBuf,
        /// The model directory in the repository, e.g. models/pfd-student.
        model_dir: PathBuf,
        /// Version to publish as (default: one above the highest present).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Print a summary of a snapshot version directory.
    Inspect {
        /// The version directory, e.g. models/pfd-student/1.
        dir: PathBuf,
        /// Print the item ids, one per line, instead of the summary.
        #[arg(long)]
        ids: bool,
    },
    /// Fully verify a snapshot version directory (checksums, contents, golden checks); exit 1 on failure.
    Validate {
        /// The version directory.
        dir: PathBuf,
    },
    /// Exit 0 if GET http://ADDR/PATH answers 200 (container health checks; no curl needed).
    Probe {
        /// host:port of the server.
        #[arg(long, env = "PRERANK_BIND", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Path to probe.
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Generate a deterministic synthetic snapshot (random-init student, clustered items).
    Synth {
        /// Destination version directory (must not exist), e.g. models/pfd-student/1.
        dest: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        items: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Item dtypes to store, comma-separated; the first is the default.
        #[arg(long, value_delimiter = ',', default_value = "f32")]
        dtypes: Vec<Dtype>,
        /// Model name (default: the destination's parent directory name).
        #[arg(long)]
        model: Option<String>,
        /// Number of golden checks to embed.
        #[arg(long, default_value_t = 3)]
        golden: usize,
    },
    /// Write load-test request bodies over a snapshot's real item ids: DIR/body-<i>.json and
    /// DIR/body-<i>.pb, the same request in JSON and in protobuf (deterministic from --seed).
    Bodies(BodiesArgs),
}

/// `prerank bodies` arguments.
#[derive(Debug, clap::Args)]
struct BodiesArgs {
    /// The snapshot version directory whose item ids are drawn, e.g. models/pfd-student/1.
    dir: PathBuf,
    /// Candidates per request (drawn with replacement from the snapshot's ids).
    #[arg(long)]
    candidates: usize,
    /// Number of request pairs to write.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Behaviours per request.
    #[arg(long, default_value_t = 50)]
    behaviors: usize,
    /// k of every request.
    #[arg(long, default_value_t = 1000)]
    k: i64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => serve(config),
        Command::Publish {
            src,
            model_dir,
            version,
        } => report(
            prerank::publish::publish(&src, &model_dir, version)
                .map(|dest| println!("{}", dest.display()))
                .map_err(anyhow::Error::from),
        ),
        Command::Inspect { dir, ids } => report(inspect(&dir, ids)),
        Command::Validate { dir } => report(validate(&dir)),
        Command::Probe { addr, path } => report(probe(&addr, &path)),
        Command::Synth {
            dest,
            items,
            seed,
            dtypes,
            model,
            golden,
        } => report(synth(dest, items, seed, dtypes, model, golden)),
        Command::Bodies(args) => report(bodies(&args)),
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: ServeConfig) -> ExitCode {
    prerank::telemetry::init_logging(config.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    report(rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        run(config, listener, shutdown_signal()).await
    }))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received; draining in-flight requests");
}

/// `prerank bodies`: request pairs (JSON, protobuf) drawn from the snapshot's ids.
fn bodies(args: &BodiesArgs) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let (dir, out_dir) = (args.dir.as_path(), args.out_dir.as_path());
    let (candidates, count, behaviors, k) = (args.candidates, args.count, args.behaviors, args.k);
    let files =
        prerank_format::SnapshotFiles::open(dir, &prerank_format::OpenOptions::unverified())
            .with_context(|| format!("opening snapshot {}", dir.display()))?;
    let ids = files.index.ids();
    anyhow::ensure!(
        !ids.is_empty(),
        "{}: the snapshot has no items",
        dir.display()
    );
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    for i in 0..count {
        let req = prerank::synth::sample_request_sized(&mut rng, ids, candidates, behaviors, k);
        let json = serde_json::to_vec(&req)?;
        let pb = prerank::proto::encode_request(&req)?;
        for (ext, bytes) in [("json", &json), ("pb", &pb)] {
            let path = out_dir.join(format!("body-{i}.{ext}"));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    println!(
        "wrote {count} request pairs (body-<i>.json, body-<i>.pb) to {}",
        out_dir.display()
    );
    Ok(())
}

fn inspect(dir: &std::path::Path, ids: bool) -> anyhow::Result<()> {
    // Structure only: the summary reports the full verification separately, below.
    let files =
        prerank_format::SnapshotFiles::open(dir, &prerank_format::OpenOptions::unverified())?;
    if ids {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = files
            .index
            .ids()
            .iter()
            .try_for_each(|id| writeln!(out, "{id}"))
            .and_then(|()| out.flush());
        return match written {
            // `inspect --ids | head` closes the pipe early: that is success, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        };
    }
    let checked = Snapshot::load(dir, &LoadOptions::default());
    let m = &files.manifest;
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "model:        {}", m.model)?;
    writeln!(out, "version:      {}", m.version)?;
    writeln!(out, "created_at:   {}", m.created_at)?;
    writeln!(out, "tau:          {}", m.tau)?;
    writeln!(
        out,
        "items:        {} x {} ({})",
        m.items.count,
        m.items.dim,
        m.items
            .vectors
            .iter()
            .map(|v| v.dtype.name())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let a = &m.architecture;
    writeln!(
        out,
        "tower:        d_model {} heads {} ffn {} widths {:?} max_len {}",
        a.d_model, a.heads, a.ffn_dim, a.tower_widths, m.features.behavior.max_len
    )?;
    writeln!(
        out,
        "user features: {}",
        m.features
            .user
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        out,
        "behaviour features: {}",
        m.features
            .behavior
            .item
            .iter()
            .chain(&m.features.behavior.extras)
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    for (name, f) in &m.files {
        writeln!(
            out,
            "file:         {name} {} bytes sha256 {}",
            f.bytes, f.sha256
        )?;
    }
    writeln!(out, "provenance:   {}", m.provenance)?;
    match checked {
        Ok(s) => writeln!(
            out,
            "checks:       checksums ok, contents ok, golden checks ok ({}), loaded in {} ms",
            s.info().golden_checks,
            s.info().load_ms
        ),
        Err(e) => writeln!(out, "checks:       FAILED: {e}"),
    }?;
    print_ignoring_closed_pipe(&out)
}

/// Writes `text` to stdout; a reader that closed the pipe early (`| head`) is not an error.
fn print_ignoring_closed_pipe(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn probe(addr: &str, path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let target = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {addr}"))?;
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    anyhow::ensure!(
        &head[9..12] == b"200",
        "{path} answered {}",
        String::from_utf8_lossy(&head[9..12])
    );
    Ok(())
}

fn validate(dir: &std::path::Path) -> anyhow::Result<()> {
    let snap = Snapshot::load(dir, &LoadOptions::default())
        .with_context(|| format!("{} is not a valid snapshot", dir.display()))?;
    let i = snap.info();
    println!(
        "ok: {}/{}: {} items x {} ({}), checksums, contents and {} golden checks verified in {} ms",
        i.model, i.version, i.item_count, i.dim, i.dtype, i.golden_checks, i.load_ms
    );
    Ok(())
}

fn synth(
    dest: PathBuf,
    items: usize,
    seed: u64,
    dtypes: Vec<Dtype>,
    model: Option<String>,
    golden: usize,
) -> anyhow::Result<()> {
    let version = dest
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<u64>().ok())
        .context(
            "the destination must end in an integer version directory, e.g. models/my-model/1",
        )?;
    let model = match model {
        Some(m) => m,
        None => dest
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .context("cannot derive the model name from the destination; pass --model")?,
    };
    let cfg = SynthConfig {
        model,
        version,
        items,
        seed,
        dtypes,
        golden,
        ..SynthConfig::default()
    };
    let m = generate(&dest, &cfg)?;
    println!("{}", dest.display());
    eprintln!(
        "wrote {}/{}: {} items x {}",
        m.model, m.version, m.items.count, m.items.dim
    );
    Ok(())
}
