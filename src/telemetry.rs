//! Logging (JSON in production, readable in development) and the Prometheus recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global log subscriber once; later calls (tests) keep the first.
pub fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(format!("{},sqlx=warn,hyper=warn", config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the upkeep folds recorded histogram samples into their buckets.
const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// The process-wide Prometheus recorder (one per process, shared by every server in it),
/// and its upkeep. The recorder keeps each histogram sample (24 bytes) until something
/// folds it into the buckets: a scrape does, and so does the upkeep, every second. Without
/// it a server nobody scrapes grew by 24 bytes a request, without bound.
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("audit_seal_transaction_seconds".into()),
                        &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            metrics::gauge!("molar_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// A thread of its own rather than a task: the recorder belongs to the process, not to one
/// server or runtime, and the thread lives as long as the process.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("molar-metrics".into())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            handle.run_upkeep();
            if let Some(bytes) = resident_bytes() {
                metrics::gauge!("process_resident_memory_bytes").set(bytes as f64);
            }
            std::thread::sleep(UPKEEP_PERIOD);
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the metrics upkeep; histograms grow until scraped");
    }
}

/// The process's resident memory (Linux: /proc/self/statm's second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
