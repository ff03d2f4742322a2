//! End-to-end tests: the real server on 127.0.0.1:0 against a fake Orga Cloud (the
//! embedded one, or wiremock where a test needs to script the upstream).

mod audit;
mod auth;
mod binary;
mod browser;
mod cli;
mod cors;
mod credentials;
mod drain;
mod gated_upstream;
mod helpers;
mod http2;
mod http_edge;
mod metrics;
mod mock_upstream;
mod pool;
mod quota;
mod ratelimit;
mod ratelimit_redis;
mod redis_connection;
mod redis_server;
mod relay;
mod reload;
mod resilience;
mod serving;
mod upstream_errors;
