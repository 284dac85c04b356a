//! Entry point: read the configuration, start logging, run until SIGTERM.
//! The process's allocator is set here, not in the library, so a program
//! that links the library (the tests) keeps its own.

mod allocator;

use gateway::Chain;
use workerrmq::configuration::Settings;
use workerrmq::startup::Application;
use workerrmq::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    allocator::tune();
    let _ = dotenvy::dotenv();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("workerrmq: configuration error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %Chain(&err), "start-up failed");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(address = %app.address(), "workerrmq listening");
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %Chain(&err), "server stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}
