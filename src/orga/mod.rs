//! Orga Cloud: the upstream client, its error enum, the wire types, and the fake
//! Orga Cloud used by `dev`, `mock-upstream` and the tests.

pub mod breaker;
mod client;
mod error;
pub mod mock;
mod retire;
mod types;

pub use breaker::CircuitState;
pub use client::OrgaClient;
pub use error::{Call, OrgaError};
pub use types::{
    ClientSecret, EphemeralToken, Expiry, Fingerprint, IceServer, IceUrls, SessionCredentials,
    UpstreamAnswer,
};
