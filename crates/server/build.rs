//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the migrations
//! folder at compile time, and without this Cargo does not see a new file there (an
//! incremental build would run the old set; a clean build is unaffected).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
