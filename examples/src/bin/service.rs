//! An axum service with a cache in front of a slow origin: memory → disk → Redis, entries
//! tagged with their team, invalidation endpoints, `/metrics` on the same router and a graceful
//! shutdown.
//!
//! ```text
//! cargo run -p tier-examples --bin service -- --redis redis://127.0.0.1:6379/
//! curl localhost:3000/users/1                       # loaded from the origin (~30 ms)
//! curl localhost:3000/users/1                       # a memory hit
//! curl -X PUT localhost:3000/teams/1/plan -d pro    # the origin changes a team: one tag invalidated
//! curl -X POST localhost:3000/invalidate/keys/1     # one key, in every tier of every instance
//! curl -X POST localhost:3000/invalidate/tags/team:1
//! curl localhost:3000/metrics
//! ```
//!
//! It prints `listening on http://ADDR` once it accepts connections and `shut down cleanly`
//! after SIGTERM or Ctrl-C, once the requests in flight are answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tier::prometheus::PrometheusHandle;
use tier::{Cache, CallOptions, DiskTier, FailSafe, MemoryTier, TierPolicy};
use tier_examples::{ready, say, Fleet, DEFAULT_REDIS_URL};

#[derive(Parser)]
#[command(about = "An axum service over memory → disk → Redis")]
struct Args {
    /// The Redis server (L3, backplane, tag generations).
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis: String,
    /// Where to listen (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The disk tier's directory (default: a temporary one, removed at exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The prefix of every Redis key of this service.
    #[arg(long, default_value = "tier-example:")]
    prefix: String,
}

/// What the origin stores, and the cache holds.
#[derive(Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    team: u64,
    plan: String,
    /// Moves on with every change at the origin, so a reader can tell a value's age.
    version: u64,
}

/// A slow database: every read takes 30 ms and is counted.
#[derive(Default)]
struct Origin {
    users: Mutex<BTreeMap<u64, User>>,
    reads: AtomicU64,
}

impl Origin {
    fn team_of(id: u64) -> u64 {
        id % 2
    }

    async fn read(&self, id: u64) -> Option<User> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.reads.fetch_add(1, Ordering::Relaxed);
        if id == 0 || id > 1000 {
            return None;
        }
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let user = users.entry(id).or_insert_with(|| User {
            id,
            name: format!("user {id}"),
            team: Self::team_of(id),
            plan: "free".into(),
            version: 1,
        });
        Some(user.clone())
    }

    /// Change the plan of every user of `team` (those the origin has seen).
    fn set_plan(&self, team: u64, plan: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for user in users.values_mut().filter(|u| u.team == team) {
            user.plan = plan.to_string();
            user.version += 1;
        }
    }
}

#[derive(Clone)]
struct App {
    users: Cache<User>,
    origin: Arc<Origin>,
    metrics: PrometheusHandle,
}

type Failure = (StatusCode, String);

fn failure(e: impl std::fmt::Display) -> Failure {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// `GET /users/{id}`: through the cache; the entry carries its team's tag. The response says
/// how many origin reads the service has made so far (`x-origin-reads`).
async fn get_user(State(app): State<App>, Path(id): Path<u64>) -> Result<Response, Failure> {
    let key = app.users.key(id.to_string());
    let tags = CallOptions::new().tags([format!("team:{}", Origin::team_of(id))]);
    let origin = app.origin.clone();
    let user = app
        .users
        .get_or_load_with(&key, &tags, move || async move {
            Ok::<_, std::convert::Infallible>(origin.read(id).await)
        })
        .await
        .map_err(failure)?;
    let reads = app.origin.reads.load(Ordering::Relaxed).to_string();
    Ok(match user {
        Some(user) => ([("x-origin-reads", reads)], Json(user.as_ref().clone())).into_response(),
        None => (StatusCode::NOT_FOUND, [("x-origin-reads", reads)]).into_response(),
    })
}

/// `PUT /teams/{team}/plan` (body: the plan): the origin changes every user of a team; one
/// tag invalidation makes every cached copy of them stale, in every tier of every instance.
async fn set_plan(
    State(app): State<App>,
    Path(team): Path<u64>,
    plan: String,
) -> Result<StatusCode, Failure> {
    app.origin.set_plan(team, plan.trim());
    app.users.invalidate_tag(&format!("team:{team}")).await.map_err(failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /invalidate/keys/{id}`.
async fn invalidate_key(
    State(app): State<App>,
    Path(id): Path<u64>,
) -> Result<StatusCode, Failure> {
    app.users.invalidate(app.users.key(id.to_string())).await.map_err(failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /invalidate/tags/{tag}`.
async fn invalidate_tag(
    State(app): State<App>,
    Path(tag): Path<String>,
) -> Result<StatusCode, Failure> {
    app.users.invalidate_tag(&tag).await.map_err(failure)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /metrics`: the Prometheus text of every metric of the process.
async fn render_metrics(State(app): State<App>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, tier::prometheus::CONTENT_TYPE)], app.metrics.render())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The cache's warnings (a tier down, a backplane gap) on stderr; RUST_LOG=tier=debug for more.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let metrics = tier::prometheus::install()?;

    let temporary;
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            temporary = tempfile::tempdir()?;
            temporary.path().join("users")
        }
    };
    let fleet = Fleet::connect(&args.redis, &args.prefix).await?;
    let connected = fleet.connected(Duration::from_secs(2)).await;
    let builder = Cache::builder("users")
        .tier(
            MemoryTier::builder().max_bytes(64 << 20).build(),
            TierPolicy::fresh(Duration::from_secs(60)).stale(Duration::from_secs(600)),
        )
        .tier(
            DiskTier::builder(&dir).capacity_bytes(256 << 20).segment_size(16 << 20).build()?,
            TierPolicy::fresh(Duration::from_secs(300)).timeout(Duration::from_millis(5)),
        )
        .fail_safe(FailSafe::up_to(Duration::from_secs(3600)));
    let users = fleet
        .mount(
            builder,
            TierPolicy::fresh(Duration::from_secs(1800)).timeout(Duration::from_millis(50)),
        )
        .build()?;
    // Keys carry the namespace version kept in Redis: read it before serving, and take traffic
    // once caught up with the invalidation log (what a readiness probe waits for): a value
    // loaded before may still be demoted by a gap the backplane reports when its connection
    // is made late, and loaded again. A Redis that is down does not keep the service from
    // starting (the connection is made in the background).
    if !connected || ready(&users, Duration::from_secs(2)).await.is_err() {
        say("Redis not reachable yet: serving from memory, disk and the origin meanwhile");
    }

    let app = App { users, origin: Arc::default(), metrics };
    let router = Router::new()
        .route("/users/{id}", get(get_user))
        .route("/teams/{team}/plan", put(set_plan))
        .route("/invalidate/keys/{id}", post(invalidate_key))
        .route("/invalidate/tags/{tag}", post(invalidate_tag))
        .route("/metrics", get(render_metrics))
        .with_state(app.clone());

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    say(format!("listening on http://{}", listener.local_addr()?));
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await?;
    // The requests in flight are answered; dropping the cache stops its background tasks and
    // closes the disk tier (its writes are on disk for the next start).
    drop(app);
    say("shut down cleanly");
    Ok(())
}
