//! The integration tests: one binary, one module per area. Every test talks to
//! a real gatehouse over HTTP (see `support`).

/// Wraps an `async fn name() { .. }` test so it runs twice: `name::sled` and
/// `name::postgres` (every server it starts uses that store).
macro_rules! store_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            async fn body() $body

            #[tokio::test]
            async fn sled() {
                crate::support::on_backend(crate::support::Backend::Sled, stringify!($name), body()).await
            }

            #[tokio::test]
            async fn postgres() {
                crate::support::on_backend(crate::support::Backend::Postgres, stringify!($name), body()).await
            }
        }
    };
}

mod support;

mod audit;
mod auth;
mod binary;
mod bodies;
mod cors;
mod disk;
mod ids;
mod instances;
mod keys;
mod mail;
mod mailsink;
mod metrics;
mod network;
mod openapi;
mod pages;
mod properties;
mod protocol;
mod sessions;
mod signing;
mod throttle;
mod tokens;
mod transfer;
mod users;
mod verified;
mod webdriver;
