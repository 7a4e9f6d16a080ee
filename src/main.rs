//! The `ledge` command line: the list of commands. Each command's arguments and help live in
//! its module under src/app/, next to the code that runs it.

use std::error::Error;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ledge::app::{
    bench, calibrate, chat, compress, convert, distill, eval, export, inspect, report, run, serve,
    synth,
};

/// LLMs at the edge: run and compress GGUF models on CPU.
#[derive(Parser)]
#[command(name = "ledge", version)]
struct Cli {
    /// The kernel set to use instead of the best this CPU runs (or set LEDGE_SIMD).
    ///
    /// scalar, avx2, avx512 (the best of avx512-amx, avx512-vnni) or neon (the best of
    /// neon-i8mm, neon-dotprod); a set the CPU cannot run is an error.
    #[arg(long, global = true, value_name = "SET")]
    simd: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    Chat(chat::ChatArgs),
    Bench(bench::BenchArgs),
    Eval(eval::EvalArgs),
    Report(report::ReportArgs),
    Compress(compress::CompressArgs),
    Serve(serve::ServeArgs),
    Synth(synth::SynthArgs),
    Convert(convert::ConvertArgs),
    Quantize(convert::QuantizeArgs),
    Calibrate(calibrate::CalibrateArgs),
    Distill(distill::DistillArgs),
    ExportHf(export::ExportArgs),
    Inspect(inspect::InspectArgs),
}

fn print<E: Into<Box<dyn Error>>>(out: Result<String, E>) -> Result<(), Box<dyn Error>> {
    print!("{}", out.map_err(Into::into)?);
    Ok(())
}

fn execute(cli: Cli) -> Result<(), Box<dyn Error>> {
    // Before any command runs, so every kernel call sees the one choice.
    ledge::quant::simd::configure(cli.simd.as_deref())?;
    match cli.command {
        Command::Run(a) => run::run(a, &mut std::io::stdout().lock()),
        Command::Chat(a) => chat::chat(
            a,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
        ),
        Command::Bench(a) => print(bench::bench(a)),
        Command::Eval(a) => print(eval::eval(a)),
        Command::Report(a) => print(report::report(a)),
        Command::Compress(a) => print(compress::compress(a)),
        Command::Serve(a) => serve::serve(a),
        Command::Synth(a) => print(synth::synth(a)),
        Command::Convert(a) => print(convert::convert(a)),
        Command::Quantize(a) => print(convert::quantize(a)),
        Command::Calibrate(a) => print(calibrate::calibrate(a)),
        Command::Distill(a) => print(distill::distill(a)),
        Command::ExportHf(a) => print(export::export(a)),
        Command::Inspect(a) => print(inspect::inspect(a)),
    }
}

fn main() -> ExitCode {
    match execute(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
