//! The integration tests: one binary, one module per area. Every test talks to
//! a real gatehouse over HTTP (see `support`).

mod support;

mod auth;
mod binary;
mod openapi;
mod bodies;
mod tokens;
mod users;
