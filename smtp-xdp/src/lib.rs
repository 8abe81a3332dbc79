//! smtp-xdp's controller library: everything the `smtp-xdp` binary does, usable by the tests.

pub mod audit;
pub mod batv;
pub mod clock;
pub mod config;
pub mod crowdsec;
pub mod daemon;
pub mod dnsbl;
pub mod events;
pub mod host;
pub mod listener;
pub mod lists;
pub mod maps;
pub mod metrics;
pub mod ownership;
pub mod pins;
pub mod policyd;
pub mod probe;
pub mod program;
pub mod socketmap;
pub mod state;
pub mod stats;
pub mod units;
pub mod user_bans;
pub mod version;
