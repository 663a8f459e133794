//! `GET /metrics`: request counts, latency and batch-size histograms in the Prometheus
//! (OpenMetrics) text format, encoded by `prometheus-client`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    batch_size: Histogram,
    inference: Histogram,
    images: Counter,
    rejected: Counter,
    queued: Gauge,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("resnet");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        let inference = latency_histogram();
        let (images, rejected, queued) = (Counter::default(), Counter::default(), Gauge::default());
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status code",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by endpoint",
            latency.clone(),
        );
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        registry.register(
            "inference_duration_seconds",
            "Time of one batched forward pass",
            inference.clone(),
        );
        registry.register(
            "images_classified",
            "Images run through the network (classified or embedded)",
            images.clone(),
        );
        registry.register(
            "queue_rejections",
            "Requests refused with 503 because the queue or the decode memory budget was full",
            rejected.clone(),
        );
        registry.register("queued_images", "Images admitted and not yet answered", queued.clone());
        Metrics {
            registry,
            requests,
            latency,
            batch_size,
            inference,
            images,
            rejected,
            queued,
        }
    }

    pub fn observe_request(&self, endpoint: &str, status: u16, elapsed: Duration) {
        let endpoint = endpoint.to_string();
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_batch(&self, size: usize, elapsed: Duration) {
        self.batch_size.observe(size as f64);
        self.inference.observe(elapsed.as_secs_f64());
        self.images.inc_by(size as u64);
    }

    pub fn rejected(&self) {
        self.rejected.inc();
    }

    pub fn queued(&self, delta: i64) {
        self.queued.inc_by(delta);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
