//! Nothing to link: this crate holds the workspace's own tests (`tests/layering.rs`), which
//! read `cargo metadata` and fail naming the dependency edge that breaks a rule of
//! ARCHITECTURE.md.
