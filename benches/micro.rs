//! Function-level micro-benchmarks, so a regression in the hot path of every
//! token-checked request shows up on its own: token verification, router
//! dispatch and a store read. Run with `cargo bench --bench micro`; the
//! end-to-end load benchmark is `bench/run.sh`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::api::routes::ROUTES;
use gatehouse::domain::token::TokenKeys;
use gatehouse::domain::unix_now;
use gatehouse::domain::user::{Role, User};
use gatehouse::http::router::{resolve, Resolution};
use gatehouse::store::SledStore;
use hyper::Method;

/// Users in the store read by `store/user_by_id`.
const STORED_USERS: usize = 3_000;

fn user(i: usize) -> User {
    User::new(
        format!("Bench {i}"),
        format!("bench-{i}@bench.example"),
        Role::User,
        // A well-formed bcrypt hash; it is never verified here.
        "$2b$04$abcdefghijklmnopqrstuuJ8tq3Ue0vJ0vIgAjoJvB2JXBJT1XbeG".to_string(),
        unix_now(),
    )
}

fn token_verify(c: &mut Criterion) {
    let keys = TokenKeys::new(&[7u8; 32], "gatehouse", 86_400).expect("token keys");
    let now = unix_now();
    let (token, _claims) = keys.issue(&user(0), None, now).expect("issue");
    c.bench_function("token/verify", |b| {
        b.iter(|| keys.verify(black_box(&token), now).expect("valid token"))
    });
}

fn router_resolve(c: &mut Criterion) {
    let id = "0192f5c2-7c3a-7d2e-9b1a-3f5e8c2d4a61";
    let user_path = format!("/api/users/{id}");
    let mut group = c.benchmark_group("router/resolve");
    let cases: [(&str, Method, &str); 5] = [
        ("me", Method::GET, "/api/auth/me"),
        ("login", Method::POST, "/api/auth/login"),
        ("patch_user", Method::PATCH, &user_path),
        ("not_found", Method::GET, "/api/nope/deeper"),
        ("method_not_allowed", Method::PUT, "/api/auth/login"),
    ];
    for (name, method, path) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let resolution = resolve(ROUTES, black_box(method), black_box(path));
                matches!(resolution, Resolution::Found(..))
            })
        });
    }
    group.finish();
}

fn store_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        SledStore::open(&gatehouse::config::database_dir(dir.path())).expect("open the store");
    // Insert from many tasks at once, so the per-write flushes are shared.
    let ids: Vec<String> = runtime.block_on(async {
        let tasks: Vec<_> = (0..STORED_USERS)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.insert_user(user(i), Vec::new()).await })
            })
            .collect();
        let mut ids = Vec::with_capacity(STORED_USERS);
        for task in tasks {
            ids.push(task.await.expect("task").expect("insert").id);
        }
        ids
    });
    c.bench_function("store/user_by_id", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for i in 0..iterations as usize {
                    let id = &ids[i.wrapping_mul(7919) % ids.len()];
                    let found = store.user_by_id(black_box(id)).await.expect("read");
                    black_box(found.expect("stored user"));
                }
                started.elapsed()
            })
        })
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = token_verify, router_resolve, store_read
}
criterion_main!(micro);
