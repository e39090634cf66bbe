//! `prerank-trainer`: the command-line front end of the reference trainer (see `docs/trainer.md`).
//! Thin by design: every subcommand parses its flags and calls into the library.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use prerank_format::Dtype;
use prerank_trainer::experiments::{markdown, measure_cost, plot, run_table2, ReportContext};
use prerank_trainer::export::{export, ExportOptions};
use prerank_trainer::logs::{self, Logs};
use prerank_trainer::model::{Method, Model, ModelConfig};
use prerank_trainer::synth::{generate, SynthConfig};
use prerank_trainer::train::{
    encode_splits, load_run, save_run, split, train, RunConfig, TrainConfig,
};

#[derive(Debug, Parser)]
#[command(
    name = "prerank-trainer",
    version,
    about = "Privileged Features Distillation trainer for prerank"
)]
struct Cli {
    /// Compute threads of candle's CPU kernels. One is fastest for these small matrices on a
    /// 2-core machine (the kernels' thread barriers cost more than they save).
    #[arg(long, env = "RAYON_NUM_THREADS", default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct TrainArgs {
    /// Data directory (impressions.parquet, items.parquet, data.json).
    #[arg(long, env = "PRERANK_DATA", default_value = "data/synth")]
    data: PathBuf,
    /// Method of Table 2.
    #[arg(long, value_enum, default_value = "pfd+md")]
    method: Method,
    /// Seed of initialisation and shuffling.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Passes over the training days.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Requests per batch (about 10 impressions each).
    #[arg(long, default_value_t = 64)]
    batch_requests: usize,
    /// Adagrad learning rate after warm-up.
    #[arg(long, default_value_t = 0.2)]
    lr: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = 200)]
    warmup_steps: usize,
    /// Distillation weight after the swap step.
    #[arg(long, default_value_t = 0.5)]
    lambda: f64,
    /// Step at which lambda switches from 0 to --lambda.
    #[arg(long, default_value_t = 400)]
    swap_step: usize,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Model size: `standard` (d_model 64, towers 256-128-128) or `tiny` (tests).
    #[arg(long, default_value = "standard")]
    arch: String,
    /// Behaviour sequence length of the model (features.behavior.max_len).
    #[arg(long, default_value_t = 50)]
    max_len: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a synthetic Taobao-like log (docs/synthetic-data.md).
    GenData {
        /// Output directory.
        #[arg(long, default_value = "data/synth")]
        out: PathBuf,
        /// Scale preset: ci, small or full.
        #[arg(long, default_value = "full")]
        scale: String,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Override the number of users of the preset.
        #[arg(long)]
        users: Option<usize>,
        /// Override the number of items of the preset.
        #[arg(long)]
        items: Option<usize>,
        /// Override the number of days of the preset (the last is held out).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Train one method and write a run directory.
    Train {
        #[command(flatten)]
        args: TrainArgs,
        /// Run directory to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export the student of a run directory as a snapshot version directory.
    Export {
        /// Run directory written by `train`.
        #[arg(long)]
        run: PathBuf,
        /// Data directory (item corpus and held-out requests for golden checks).
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        target: ExportTarget,
    },
    /// Reproduce Table 2: every method, several seeds, docs/experiments.md and a PNG plot.
    Table2 {
        #[command(flatten)]
        args: TrainArgs,
        /// Number of seeds (1..=N).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Markdown report to write.
        #[arg(long, default_value = "docs/experiments.md")]
        report: PathBuf,
        /// PNG plot to write (linked from the report by file name).
        #[arg(long, default_value = "docs/table2-auc.png")]
        plot: PathBuf,
        /// Candidates per request in the cost comparison (0 = skip it).
        #[arg(long, default_value_t = 1000)]
        cost_candidates: usize,
    },
    /// Measure the section-3 cost comparison alone.
    Cost {
        #[arg(long, default_value = "data/synth")]
        data: PathBuf,
        #[arg(long, default_value_t = 1000)]
        candidates: usize,
        #[arg(long, default_value_t = 20)]
        repeats: usize,
        #[arg(long, default_value_t = 50)]
        max_len: usize,
    },
    /// Build the bundled default model in one go: generate data, train PFD+MD, export.
    Bundle {
        #[command(flatten)]
        args: TrainArgs,
        /// Scale preset of the generated data.
        #[arg(long, default_value = "full")]
        scale: String,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        data_seed: u64,
        #[command(flatten)]
        target: ExportTarget,
    },
}

#[derive(Debug, clap::Args)]
struct ExportTarget {
    /// Model repository root (the snapshot goes to <out>/<model>/<version>).
    #[arg(long, default_value = "models")]
    out: PathBuf,
    /// Model name.
    #[arg(long, default_value = "pfd-student")]
    model: String,
    /// Version number.
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// Item vector dtypes, the first is the default (f32, f16, int8).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtypes: Vec<String>,
    /// Number of golden checks from held-out requests (one cold-start check is added).
    #[arg(long, default_value_t = 3)]
    golden: usize,
    /// Replace an existing version directory (written aside first, then swapped in).
    #[arg(long)]
    replace: bool,
}

fn model_config(arch: &str, max_len: usize) -> anyhow::Result<ModelConfig> {
    Ok(match arch {
        "standard" => ModelConfig::standard(max_len),
        "tiny" => ModelConfig::tiny(max_len),
        other => bail!("unknown --arch {other:?} (expected standard or tiny)"),
    })
}

fn train_config(a: &TrainArgs) -> TrainConfig {
    TrainConfig {
        epochs: a.epochs,
        batch_requests: a.batch_requests,
        lr: a.lr,
        warmup_steps: a.warmup_steps,
        lambda: a.lambda,
        swap_step: a.swap_step,
        max_steps: a.max_steps,
        progress: true,
        ..TrainConfig::new(a.method, a.seed)
    }
}

fn parse_dtypes(names: &[String]) -> anyhow::Result<Vec<Dtype>> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "int8" => Ok(Dtype::Int8),
            other => bail!("unknown dtype {other:?} (f32, f16, int8)"),
        })
        .collect()
}

fn do_export(
    model: &Model,
    data: &Logs,
    target: &ExportTarget,
    provenance: serde_json::Value,
) -> anyhow::Result<()> {
    let (_, held_out) = split(data);
    let opts = ExportOptions {
        model_name: target.model.clone(),
        version: target.version,
        dtypes: parse_dtypes(&target.dtypes)?,
        golden: target.golden,
        provenance,
    };
    let dest = target
        .out
        .join(&target.model)
        .join(target.version.to_string());
    if dest.exists() && !target.replace {
        bail!("{} exists (use --replace to swap it)", dest.display());
    }
    let staging = target
        .out
        .join(&target.model)
        .join(format!(".staging-{}", target.version));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let manifest = export(model, &data.items, &held_out, &opts, &staging)?;
    if dest.exists() {
        let old = target
            .out
            .join(&target.model)
            .join(format!(".old-{}", target.version));
        std::fs::rename(&dest, &old)?;
        std::fs::rename(&staging, &dest)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&staging, &dest)?;
    }
    println!(
        "exported {} v{} ({} items, dim {}, {} golden checks) to {}",
        manifest.model,
        manifest.version,
        manifest.items.count,
        manifest.items.dim,
        manifest.golden.len(),
        dest.display()
    );
    Ok(())
}

fn provenance(run: &RunConfig, metrics: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "method": run.train.method,
        "lambda": run.train.lambda,
        "swap_step": run.train.swap_step,
        "seed": run.train.seed,
        "data_seed": run.data.get("config").and_then(|c| c.get("seed")).cloned(),
        "data": run.data,
        "train": run.train,
        "metrics": {
            "held_out_student_auc": metrics["eval"]["student_auc"],
            "held_out_teacher_auc": metrics["eval"]["teacher_auc"],
            "held_out_impressions": metrics["eval"]["impressions"],
            "steps": metrics["steps"],
        },
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // candle reads RAYON_NUM_THREADS when its thread pool starts, which is after this point.
    std::env::set_var("RAYON_NUM_THREADS", cli.threads.max(1).to_string());
    match cli.command {
        Command::GenData {
            out,
            scale,
            seed,
            users,
            items,
            days,
        } => {
            let mut cfg = SynthConfig::preset(&scale, seed)
                .with_context(|| format!("unknown --scale {scale:?} (ci, small, full)"))?;
            cfg.users = users.unwrap_or(cfg.users);
            cfg.items = items.unwrap_or(cfg.items);
            cfg.days = days.unwrap_or(cfg.days);
            let t = std::time::Instant::now();
            let data = generate(&cfg);
            let clicks: usize = data
                .requests
                .iter()
                .flat_map(|r| &r.shown)
                .map(|s| usize::from(s.label))
                .sum();
            let desc = serde_json::json!({
                "source": "prerank-trainer synthetic generator",
                "scale": scale,
                "config": cfg,
                "users": cfg.users,
                "items": data.items.len(),
                "requests": data.requests.len(),
                "impressions": data.impressions(),
                "clicks": clicks,
                "held_out_day": data.last_day(),
            });
            logs::write_dir(&out, &data, &desc)?;
            println!(
                "wrote {} ({} requests, {} impressions, CTR {:.4}) in {:.1}s",
                out.display(),
                data.requests.len(),
                data.impressions(),
                clicks as f64 / data.impressions().max(1) as f64,
                t.elapsed().as_secs_f64()
            );
        }
        Command::Train { args, out } => {
            let (data, desc) = logs::read_dir(&args.data)?;
            let mcfg = model_config(&args.arch, args.max_len)?;
            let tcfg = train_config(&args);
            let (tr, te) = encode_splits(&mcfg, &data)?;
            let model = Model::new(mcfg.clone(), tcfg.method, tcfg.seed)?;
            let report = train(&model, &tcfg, &tr, &te)?;
            let run = RunConfig {
                train: tcfg,
                model: mcfg,
                data: desc,
            };
            save_run(&out, &run, &model, &report)?;
            println!(
                "{}: student AUC {:.4}, teacher AUC {}, {} steps in {:.1}s -> {}",
                report.method.label(),
                report.eval.student_auc,
                report
                    .eval
                    .teacher_auc
                    .map_or("-".to_string(), |a| format!("{a:.4}")),
                report.steps,
                report.train_seconds,
                out.display()
            );
        }
        Command::Export { run, data, target } => {
            let (run_cfg, model, metrics) = load_run(&run)?;
            let (logs, _) = logs::read_dir(&data)?;
            do_export(&model, &logs, &target, provenance(&run_cfg, &metrics))?;
        }
        Command::Table2 {
            args,
            seeds,
            report,
            plot: plot_path,
            cost_candidates,
        } => {
            let start = std::time::Instant::now();
            let (data, desc) = logs::read_dir(&args.data)?;
            let mcfg = model_config(&args.arch, args.max_len)?;
            let mut tcfg = train_config(&args);
            tcfg.progress = false;
            let (tr, te) = encode_splits(&mcfg, &data)?;
            let seed_list: Vec<u64> = (1..=seeds).collect();
            let results = run_table2(&mcfg, &tcfg, &seed_list, &tr, &te, |r| {
                println!(
                    "{:>8} seed {}: student AUC {:.4}, teacher AUC {}, {} steps, {:.0}s (elapsed {:.1} min)",
                    r.method.label(),
                    r.seed,
                    r.student_auc,
                    r.teacher_auc.map_or("-".into(), |a| format!("{a:.4}")),
                    r.steps,
                    r.seconds,
                    start.elapsed().as_secs_f64() / 60.0
                );
            })?;
            let cost = if cost_candidates > 0 {
                let (_, held_out) = split(&data);
                let sample = held_out
                    .iter()
                    .max_by_key(|r| r.behaviors.len())
                    .context("no held-out request")?;
                let cost_cfg = model_config(&args.arch, 50)?;
                Some(measure_cost(&cost_cfg, sample, cost_candidates, 10)?)
            } else {
                None
            };
            plot(&results, &plot_path).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
            let plot_file = plot_path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            let command: Vec<String> = std::env::args().collect();
            let ctx = ReportContext {
                command: format!(
                    "cargo run --release -p prerank-trainer -- {}",
                    command[1..].join(" ")
                ),
                data: desc,
                model: mcfg,
                train: tcfg,
                wall_seconds: start.elapsed().as_secs_f64(),
                train_impressions: tr.impressions(),
                test_impressions: te.impressions(),
                plot_file,
                cost,
            };
            std::fs::write(&report, markdown(&results, &ctx))
                .with_context(|| format!("writing {}", report.display()))?;
            println!("wrote {} and {}", report.display(), plot_path.display());
        }
        Command::Cost {
            data,
            candidates,
            repeats,
            max_len,
        } => {
            let (logs, _) = logs::read_dir(&data)?;
            let (_, held_out) = split(&logs);
            let sample = held_out
                .iter()
                .max_by_key(|r| r.behaviors.len())
                .context("no held-out request")?;
            let cfg = ModelConfig::standard(max_len);
            let report = measure_cost(&cfg, sample, candidates, repeats)?;
            println!("{}", report.markdown());
        }
        Command::Bundle {
            args,
            scale,
            data_seed,
            target,
        } => {
            let synth = SynthConfig::preset(&scale, data_seed)
                .with_context(|| format!("unknown --scale {scale:?}"))?;
            let data = generate(&synth);
            let desc = serde_json::json!({
                "source": "prerank-trainer synthetic generator",
                "scale": scale,
                "config": synth,
                "requests": data.requests.len(),
                "impressions": data.impressions(),
            });
            let mcfg = model_config(&args.arch, args.max_len)?;
            let tcfg = train_config(&args);
            let (tr, te) = encode_splits(&mcfg, &data)?;
            let model = Model::new(mcfg.clone(), tcfg.method, tcfg.seed)?;
            let report = train(&model, &tcfg, &tr, &te)?;
            println!(
                "{}: held-out student AUC {:.4}, teacher AUC {}",
                report.method.label(),
                report.eval.student_auc,
                report
                    .eval
                    .teacher_auc
                    .map_or("-".into(), |a| format!("{a:.4}"))
            );
            let run = RunConfig {
                train: tcfg,
                model: mcfg,
                data: desc,
            };
            let metrics = serde_json::json!({"eval": report.eval, "steps": report.steps});
            let mut prov = provenance(&run, &metrics);
            prov["command"] = std::env::args().collect::<Vec<_>>()[1..].join(" ").into();
            do_export(&model, &data, &target, prov)?;
        }
    }
    Ok(())
}
