//! Shared helpers for Connexa's cross-crate end-to-end tests (`tests/tests/*.rs`).

pub mod child;
pub mod doc_commands;
pub mod fleet_store;
pub mod lab;
pub mod loopback_pptp;
pub mod ovpn_lab;
pub mod sim_socks;
pub mod socks_kit;
