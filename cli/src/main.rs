//! `lamina`: run quantized Llama-family models on any GPU through wgpu.

mod bench;
mod common;
mod fetch;
mod generate;
mod inspect;
mod perplexity;
mod quantize;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lamina",
    version,
    about = "Quantized Llama-family inference on any GPU (wgpu/WGSL)"
)]
struct Cli {
    /// More logging on stderr (-v: adapter and timings, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streamed to stdout.
    Generate(generate::GenerateArgs),
    /// Interactive chat with the model's chat template; keeps the history.
    Chat(generate::ChatArgs),
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity.
    Perplexity(perplexity::PerplexityArgs),
    /// Prompt-processing and generation speed (llama-bench style).
    Bench(bench::BenchArgs),
    /// Show a model's metadata, tensors, formats and sizes.
    Inspect(inspect::InspectArgs),
    /// Quantize a model to mixed-width 1..8-bit groups (RTN, GPTQ, SliM-LLM).
    Quantize(quantize::QuantizeArgs),
    /// Download the default model (SmolLM2-135M-Instruct Q4_1) into the cache.
    Fetch(fetch::FetchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// List the GPU adapters wgpu can see, and the one Lamina would pick.
    Devices,
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // Mesa's Vulkan device-select layer connects to a Wayland or X display
    // when the instance enumerates GPUs, to rank them, and on a headless
    // machine prints "XDG_RUNTIME_DIR is invalid" twice. Lamina ranks the
    // adapters itself (LAMINA_ADAPTER picks one), so the layer is off unless
    // the user set its variable.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: the first statement of main: no other thread exists yet
        // to read the environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or(format!("{level},wgpu_core=warn,wgpu_hal=warn,naga=warn")),
    )
    .format_timestamp(None)
    .init();
    let r = match &cli.command {
        Command::Generate(a) => generate::run_generate(a),
        Command::Chat(a) => generate::run_chat(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Devices => common::list_devices(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`lamina inspect | head`): done.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of every command's flags (defaults among them).
    #[test]
    fn flags_are_well_formed() {
        super::Cli::command().debug_assert();
    }
}
