//! `resnet serve`: an HTTP API over a [`Classifier`], and the studio page.
//!
//! ```text
//! POST /v1/classify[?top_k=5&name=…]  raw image bytes, or multipart with `image` parts
//! GET  /v1/models                     the loaded model: weights, classes, input, params, FLOPs
//! GET  /healthz                       liveness
//! GET  /metrics                       Prometheus/OpenMetrics text
//! GET  /                              the studio page (one self-contained HTML file)
//! ```
//!
//! Requests are decoded on tokio's blocking pool, then queued image by image for the
//! inference threads of [`batcher`], which run concurrent images as one batch. At most
//! `max_queue` images are admitted at once; beyond that the answer is 503 with `Retry-After`.
//! Images in flight share one memory budget (`max_image_memory`): a request's body reserves its
//! bytes as they arrive, and each image reserves what its header says decoding will cost
//! before it is decoded; when the budget is full the answer is 503 with `Retry-After`, and an
//! image that could never fit gets 413. So no number of concurrent requests can make the
//! server hold more than the budget in bodies and pixels.
//! Every error is JSON: `{"error": "…"}`.
//!
//! Layering: may import `classify`, `preprocess`, `error`; see the README's module order.

mod batcher;
mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};

use crate::classify::{top_k, Classifier, Layer, Prediction, TransformSource};
use crate::error::{Error, Result};
use crate::preprocess::{decode, decode_cost, Transform, DEFAULT_MAX_PIXELS};
use batcher::{Batcher, Job, Reply, Want};
pub use metrics::Metrics;

const STUDIO: &str = include_str!("studio.html");

/// Server settings; `Default` gives the CLI's defaults.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// 127.0.0.1 by default: put a reverse proxy in front, or bind 0.0.0.0, to expose it.
    pub addr: SocketAddr,
    /// Largest request body in bytes (413 above it).
    pub max_body: usize,
    /// Largest image in pixels, checked from the header before decoding (422 above it).
    pub max_pixels: u64,
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// How long the first image of a batch waits for others.
    pub batch_window: Duration,
    /// Most images admitted and not yet answered (503 above it).
    pub max_queue: usize,
    /// Threads of the async runtime (I/O only; inference has its own threads).
    pub io_threads: usize,
    /// Bytes that request bodies and decoded images in flight may take in all (503 when full,
    /// 413 for an image that alone needs more).
    pub max_image_memory: u64,
}

/// The default image budget: 2 GiB, room for a few photos at PIL's pixel limit at once.
pub const DEFAULT_MAX_IMAGE_MEMORY: u64 = 2 << 30;

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body: 20_000_000,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_batch: 16,
            batch_window: Duration::from_millis(2),
            max_queue: 256,
            io_threads: 2,
            max_image_memory: DEFAULT_MAX_IMAGE_MEMORY,
        }
    }
}

/// What `GET /v1/models` returns.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// As given to `--model` (a built-in name, or the architecture).
    pub model: String,
    pub architecture: String,
    /// The weights tag, file or built-in name.
    pub weights: String,
    pub classes: Vec<String>,
    pub num_classes: usize,
    /// `[channels, height, width]` of the network input after preprocessing.
    pub input: [usize; 3],
    pub transform: Transform,
    /// Where the transform came from: a tag, a recognised release file, a run folder, flags.
    pub transform_source: TransformSource,
    pub parameters: u64,
    /// Multiply-accumulates per image at `input`, in billions (torchvision's "GFLOPS").
    pub gflops: f64,
    /// `fast` (the CPU engine) or `burn`.
    pub engine: &'static str,
    /// The fast engine's matrix kernel (`avx512`, `avx2`, `neon`, `portable`); none on burn.
    pub kernel: Option<&'static str>,
    pub workers: usize,
    pub max_batch: usize,
    /// Stages (`layer1` … `layerN`): the layers `/v1/explain` takes.
    pub stages: usize,
}

/// A bound, ready server. [`Server::run`] serves until its shutdown future resolves.
pub struct Server {
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    io_threads: usize,
}

struct AppState {
    info: ModelInfo,
    transform: Transform,
    max_pixels: u64,
    max_body: usize,
    max_queue: usize,
    /// One permit per admitted image.
    admitted: Arc<Semaphore>,
    /// One permit per core: a decoded image may take hundreds of MB (up to `max_pixels`), so
    /// admitted requests decode a few at a time rather than all at once.
    decoders: Arc<Semaphore>,
    /// The image budget (bodies and decoded pixels), one permit per [`BUDGET_UNIT`] bytes.
    image_budget: Arc<Semaphore>,
    image_budget_units: u32,
    batcher: Batcher,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Binds `cfg.addr` (port 0 picks a free one) and starts one inference thread per
    /// classifier; all must be the same model (`resnet serve --workers N` loads N copies).
    pub fn bind(name: &str, classifiers: Vec<Classifier>, cfg: &ServeConfig) -> Result<Server> {
        let first = classifiers
            .first()
            .ok_or_else(|| Error::Config("serve needs at least one classifier".into()))?;
        let config = first.config();
        let transform = first.transform().clone();
        let (h, w) = transform.output_size();
        let c = config.complexity(h, w);
        let info = ModelInfo {
            model: name.to_string(),
            architecture: first.name().to_string(),
            weights: first.weights().describe(),
            classes: first.labels().to_vec(),
            num_classes: config.num_classes,
            input: [transform.channels(), h, w],
            transform: transform.clone(),
            transform_source: first.transform_source().clone(),
            parameters: c.params,
            gflops: c.gflops(),
            engine: if first.engine().is_some() { "fast" } else { "burn" },
            kernel: first.engine().map(|e| e.isa().name()),
            workers: classifiers.len(),
            max_batch: cfg.max_batch.max(1),
            stages: config.layers.len(),
        };
        let listener = std::net::TcpListener::bind(cfg.addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                Error::Serve(format!(
                    "cannot listen on {}: {e}; if another program holds the port, pick another with --addr",
                    cfg.addr
                ))
            })?;
        let budget_units = u32::try_from(cfg.max_image_memory.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let metrics = Arc::new(Metrics::new());
        let batcher = Batcher::start(classifiers, cfg.max_batch, cfg.batch_window, metrics.clone())
            .map_err(|e| Error::Serve(format!("cannot start the inference threads: {e}")))?;
        Ok(Server {
            listener,
            state: Arc::new(AppState {
                info,
                transform,
                max_pixels: cfg.max_pixels,
                max_body: cfg.max_body,
                max_queue: cfg.max_queue,
                admitted: Arc::new(Semaphore::new(cfg.max_queue)),
                decoders: Arc::new(Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                )),
                image_budget: Arc::new(Semaphore::new(budget_units as usize)),
                image_budget_units: budget_units,
                batcher,
                metrics,
            }),
            io_threads: cfg.io_threads.max(1),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn info(&self) -> &ModelInfo {
        &self.state.info
    }

    /// The routes, for embedding in another axum app.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on its own tokio runtime until `shutdown` resolves, then stops accepting,
    /// finishes the requests in flight and joins the inference threads.
    pub fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.io_threads)
            .thread_name("resnet-io")
            .enable_all()
            .build()
            .map_err(|e| Error::Serve(format!("cannot start the async runtime: {e}")))?;
        let app = self.router();
        let served = rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        });
        self.state.batcher.shutdown();
        served.map_err(|e| Error::Serve(e.to_string()))
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: pass it to [`Server::run`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(studio))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/classify", post(classify))
        .route("/v1/embed", post(embed))
        .route("/v1/explain", post(explain))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// An error answer: its status and a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(ErrorBody { error: &self.message })).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// Counts and times every request under a fixed endpoint label (unknown paths are `other`).
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        p @ ("/" | "/healthz" | "/metrics" | "/v1/models" | "/v1/classify" | "/v1/embed" | "/v1/explain") => {
            p.to_string()
        }
        _ => "other".to_string(),
    };
    let start = Instant::now();
    let res = next.run(req).await;
    state
        .metrics
        .observe_request(&endpoint, res.status().as_u16(), start.elapsed());
    res
}

async fn studio() -> Html<&'static str> {
    Html(STUDIO)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelInfo> {
    Json(state.info.clone())
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], state.metrics.encode()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /, /healthz, /metrics, /v1/models and POST /v1/classify",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "wrong method for this endpoint: POST to /v1/classify, /v1/embed and /v1/explain, GET the others",
    )
}

#[derive(Deserialize)]
struct ClassifyQuery {
    top_k: Option<usize>,
    /// The `image` field of a raw-body answer (a multipart part brings its file name).
    name: Option<String>,
}

/// One image's answer: the schema of `resnet classify --format json`.
#[derive(Serialize)]
struct ImageResult {
    image: String,
    predictions: Vec<Prediction>,
}

/// `POST /v1/classify`. A raw body answers one object; multipart answers an array, one
/// object per `image` part, in order.
async fn classify(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<ClassifyQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> std::result::Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let k = match q.top_k {
        Some(0) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "top_k must be at least 1")),
        Some(k) => k.min(state.info.num_classes),
        None => 5.min(state.info.num_classes),
    };
    let (rows, multipart) = infer(&state, q.name, req, Want::Logits, false).await?;
    let results: Vec<ImageResult> = rows
        .into_iter()
        .map(Answer::row)
        .map(|(image, logits)| ImageResult {
            image,
            predictions: top_k(&logits, k, &state.info.classes),
        })
        .collect();
    Ok(one_or_many(results, multipart))
}

#[derive(Deserialize)]
struct EmbedQuery {
    /// Scale each embedding to unit L2 norm.
    #[serde(default)]
    normalize: bool,
    name: Option<String>,
}

/// One image's embedding: the schema of `resnet embed`'s JSON lines.
#[derive(Serialize)]
struct EmbedResult {
    image: String,
    embedding: Vec<f32>,
}

/// `POST /v1/embed`: the pooled features before `fc`, with classify's bodies, limits and errors.
async fn embed(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<EmbedQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> std::result::Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let (rows, multipart) = infer(&state, q.name, req, Want::Embedding, false).await?;
    let results: Vec<EmbedResult> = rows
        .into_iter()
        .map(Answer::row)
        .map(|(image, mut embedding)| {
            if q.normalize {
                crate::classify::export::unit(&mut embedding);
            }
            EmbedResult { image, embedding }
        })
        .collect();
    Ok(one_or_many(results, multipart))
}

#[derive(Deserialize)]
struct ExplainQuery {
    /// The class to explain (default: the top-1).
    class: Option<usize>,
    /// The target stage (default: the last).
    layer: Option<String>,
    name: Option<String>,
}

/// One image's Grad-CAM: the schema of `resnet explain --format json`.
#[derive(Serialize)]
struct ExplainResult {
    image: String,
    class: Prediction,
    layer: String,
    cam: Vec<Vec<f32>>,
}

/// `POST /v1/explain`: Grad-CAM with classify's bodies, limits and errors. JSON, or with
/// `Accept: image/png` (one image, a raw body) the overlay PNG.
async fn explain(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> std::result::Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let stages = state.info.stages;
    let layer = match &q.layer {
        Some(l) => l.parse::<Layer>().map_err(|e| bad(e.to_string()))?,
        None => Layer::Stage(stages),
    };
    if !matches!(layer, Layer::Stage(k) if (1..=stages).contains(&k)) {
        return Err(bad(format!("layer must be one of layer1 to layer{stages}")));
    }
    if let Some(c) = q.class.filter(|&c| c >= state.info.num_classes) {
        return Err(bad(format!(
            "class {c} is out of range: this model has classes 0 to {}",
            state.info.num_classes - 1
        )));
    }
    let png = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("image/png"));
    let want = Want::Explain { class: q.class, layer };
    let (answers, multipart) = infer(&state, q.name, req, want, png).await?;
    if png {
        if multipart || answers.len() != 1 {
            return Err(bad(
                "an image/png answer takes one image in a raw body; ask for JSON to explain several".into(),
            ));
        }
        let Some(Answer {
            reply: Reply::Cam(e),
            crop: Some(crop),
            ..
        }) = answers.into_iter().next()
        else {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no map came back"));
        };
        let mut bytes = std::io::Cursor::new(Vec::new());
        crate::classify::overlay(&crop, &e)
            .write_to(&mut bytes, image::ImageFormat::Png)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the PNG: {e}")))?;
        return Ok(([(header::CONTENT_TYPE, "image/png")], bytes.into_inner()).into_response());
    }
    let results: Vec<ExplainResult> = answers
        .into_iter()
        .filter_map(|a| match a.reply {
            Reply::Cam(e) => Some(ExplainResult {
                image: a.name,
                cam: e.rows(),
                class: e.class,
                layer: e.layer,
            }),
            Reply::Row(_) => None,
        })
        .collect();
    Ok(one_or_many(results, multipart))
}

/// A raw body answers one object; multipart answers an array.
fn one_or_many<T: Serialize>(mut results: Vec<T>, multipart: bool) -> Response {
    if multipart {
        Json(results).into_response()
    } else {
        Json(results.remove(0)).into_response()
    }
}

/// One image's answer from the inference threads.
struct Answer {
    name: String,
    reply: Reply,
    /// The image the network saw (resized and cropped), when asked for.
    crop: Option<image::RgbImage>,
}

impl Answer {
    /// Logits or an embedding (what classify and embed ask for).
    fn row(self) -> (String, Vec<f32>) {
        match self.reply {
            Reply::Row(r) => (self.name, r),
            Reply::Cam(e) => (self.name, e.cam),
        }
    }
}

/// Reads, admits, decodes and runs a request's images; each image's answer, and whether the
/// body was multipart.
async fn infer(
    state: &Arc<AppState>,
    name: Option<String>,
    req: Request,
    want: Want,
    keep_crops: bool,
) -> std::result::Result<(Vec<Answer>, bool), ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/"));
    let (parts, body) = req.into_parts();
    let (body, _body_reserved) = read_body(body, state.max_body, state).await?;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let images = request_images(is_multipart, content_type, body, name).await?;

    let n = images.len();
    if n > state.max_queue {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{n} images in one request, but this server takes at most {} at once; split the request",
                state.max_queue
            ),
        ));
    }
    let _admitted = Admission::try_new(state, n).ok_or_else(|| {
        state.metrics.rejected();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (its queue is full); retry in a moment",
        )
    })?;

    // Decoding and resizing are CPU work: keep them off the async threads.
    let decoding = state
        .decoders
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"))?;
    let st = state.clone();
    let names: Vec<String> = images.iter().map(|(name, _)| name.clone()).collect();
    let inputs = tokio::task::spawn_blocking(move || {
        // Held until the decode ends, even if the client has gone.
        let _decoding = decoding;
        images
            .iter()
            .map(|(name, bytes)| {
                let _reserved = reserve_decode(&st, bytes, name)?;
                let img = decode(bytes, name, st.max_pixels)
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
                let crop = st.transform.resize_and_crop(&img);
                Ok((st.transform.normalize(&crop), keep_crops.then_some(crop)))
            })
            .collect::<std::result::Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding failed: {e}")))??;

    let dims = state.info.input;
    let mut waits = Vec::with_capacity(n);
    let mut crops = Vec::with_capacity(n);
    for (x, crop) in inputs {
        crops.push(crop);
        let (reply, wait) = oneshot::channel();
        let job = Job {
            x,
            dims,
            want,
            enqueued: Instant::now(),
            reply,
        };
        if !state.batcher.submit(job) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        waits.push(wait);
    }
    let mut answers = Vec::with_capacity(n);
    for ((name, wait), crop) in names.into_iter().zip(waits).zip(crops) {
        let reply = wait
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the inference worker stopped"))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("inference failed: {e}")))?;
        answers.push(Answer { name, reply, crop });
    }
    Ok((answers, is_multipart))
}

/// Bytes per permit of the decode budget (a tokio semaphore counts at most 2^61 permits, and
/// acquires at most 2^32 at once).
const BUDGET_UNIT: u64 = 64 << 10;

/// Reserves what decoding `bytes` will take from the server's budget, for as long as the
/// permit lives. Full budget: 503 with `Retry-After`; more than the whole budget: 413.
fn reserve_decode(
    st: &AppState,
    bytes: &[u8],
    name: &str,
) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let unprocessable = |e: Error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    let (w, h, cost) = decode_cost(bytes, name).map_err(unprocessable)?;
    let pixels = w as u64 * h as u64;
    if pixels > st.max_pixels {
        return Err(unprocessable(Error::TooManyPixels {
            path: name.to_string(),
            width: w,
            height: h,
            pixels,
            max: st.max_pixels,
        }));
    }
    let units = cost.div_ceil(BUDGET_UNIT).max(1);
    if units > st.image_budget_units as u64 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{name}: decoding this {w}x{h} image needs {cost} bytes, over this server's decode budget of {} bytes (resnet serve --max-image-memory); send a smaller image",
                st.image_budget_units as u64 * BUDGET_UNIT
            ),
        ));
    }
    st.image_budget
        .clone()
        .try_acquire_many_owned(units as u32)
        .map_err(|_| {
            st.metrics.rejected();
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy decoding other images (its image memory budget is full); retry in a moment",
            )
        })
}

/// The images of a request body, as `(name, bytes)`: the body itself, or each `image` part of
/// a multipart body; each must look like an image (415 otherwise).
async fn request_images(
    is_multipart: bool,
    content_type: Option<&str>,
    body: Bytes,
    name: Option<String>,
) -> std::result::Result<Vec<(String, Bytes)>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body is empty: send the image bytes, or multipart/form-data with `image` parts",
        ));
    }
    let images = if is_multipart {
        let mut req = Request::new(axum::body::Body::from(body));
        if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(c).ok()) {
            req.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        read_multipart(req).await?
    } else {
        vec![(name.unwrap_or_else(|| "image".into()), body)]
    };
    for (name, bytes) in &images {
        if image::guess_format(bytes).is_err() {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{name}: not an image; send JPEG, PNG, WebP, BMP, TIFF or GIF"),
            ));
        }
    }
    Ok(images)
}

/// What the handler does with a body before inference, for the fuzzer and its stable replay:
/// the input's first line is the Content-Type, the rest the body, which is split into images
/// ([`request_images`]) whose headers are read ([`decode_cost`]). Returns the HTTP status the
/// request would get so far.
#[doc(hidden)]
pub fn fuzz_request(input: &[u8]) -> u16 {
    let split = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
    let content_type = String::from_utf8_lossy(&input[..split]);
    let body = input.get(split + 1..).unwrap_or(&[]);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return 500;
    };
    let multipart = content_type.trim_start().to_ascii_lowercase().starts_with("multipart/");
    let body = Bytes::copy_from_slice(body);
    match rt.block_on(request_images(multipart, Some(&content_type), body, None)) {
        Err(e) => e.status.as_u16(),
        Ok(images) => {
            for (name, bytes) in &images {
                if decode_cost(bytes, name).is_err() {
                    return 422;
                }
            }
            200
        }
    }
}

/// The `image` parts of a multipart body, as `(file name, bytes)`.
async fn read_multipart(req: Request) -> std::result::Result<Vec<(String, Bytes)>, ApiError> {
    let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed multipart request: {}", e.body_text()),
        )
    })?;
    let mut images = Vec::new();
    loop {
        let field = mp.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else { break };
        if field.name() != Some("image") {
            continue;
        }
        let name = field
            .file_name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("image {}", images.len() + 1));
        let bytes = field.bytes().await.map_err(multipart_error)?;
        images.push((name, bytes));
    }
    if images.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the multipart body has no `image` part; send each file as a part named `image`",
        ));
    }
    Ok(images)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("malformed multipart request: {}", e.body_text()),
    )
}

/// How much more than `--max-body` is read, and dropped, before a 413: enough for the client
/// to finish sending and read the answer. (Closing with unread data makes the kernel reset the
/// connection, and the client then sees an error instead of the 413.)
const DRAIN_LIMIT: usize = 64 << 20;

/// The whole body, up to `limit` bytes; over it, a 413 after draining at most [`DRAIN_LIMIT`].
/// The bytes kept are reserved from the image budget as they arrive (503 when it is full).
async fn read_body(
    mut body: axum::body::Body,
    limit: usize,
    st: &AppState,
) -> std::result::Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    use http_body_util::BodyExt;
    let unreadable = |e: axum::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {e}"),
        )
    };
    let mut buf = Vec::new();
    let mut total = 0usize;
    let mut reserved: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut units = 0u64;
    let budget = st.image_budget_units as u64;
    let (mut over_budget, mut busy) = (false, false);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(unreadable)?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        let want = (total as u64).div_ceil(BUDGET_UNIT);
        over_budget |= want > budget;
        if total <= limit && !over_budget && !busy && want > units {
            let more = u32::try_from(want - units).unwrap_or(u32::MAX);
            match st.image_budget.clone().try_acquire_many_owned(more) {
                Ok(p) => match reserved.as_mut() {
                    Some(r) => r.merge(p),
                    None => reserved = Some(p),
                },
                Err(_) => busy = true,
            }
            units = want;
        }
        if total <= limit && !over_budget && !busy {
            buf.extend_from_slice(&data);
        } else {
            // Refused: drop what was kept, read on (not kept) so the client sees the answer.
            buf = Vec::new();
            reserved = None;
            if total > limit.saturating_add(DRAIN_LIMIT) {
                break;
            }
        }
    }
    if total > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over this server's limit of {limit} bytes (resnet serve --max-body); send a smaller image"),
        ));
    }
    if over_budget {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over this server's image memory budget of {} bytes (resnet serve --max-image-memory); send a smaller image",
                budget * BUDGET_UNIT
            ),
        ));
    }
    if busy {
        st.metrics.rejected();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (its image memory budget is full); retry in a moment",
        ));
    }
    Ok((Bytes::from(buf), reserved))
}

/// A request's images, admitted: their queue permits, counted in the `queued_images` gauge
/// until the answer is sent.
struct Admission<'a> {
    _permits: tokio::sync::OwnedSemaphorePermit,
    metrics: &'a Metrics,
    n: i64,
}

impl<'a> Admission<'a> {
    /// `None` when the queue has no room for `n` more images.
    fn try_new(state: &'a AppState, n: usize) -> Option<Self> {
        let permits = state
            .admitted
            .clone()
            .try_acquire_many_owned(u32::try_from(n).ok()?)
            .ok()?;
        state.metrics.queued(n as i64);
        Some(Admission {
            _permits: permits,
            metrics: &state.metrics,
            n: n as i64,
        })
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.metrics.queued(-self.n);
    }
}
