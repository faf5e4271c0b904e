//! The client state machine against a repository whose every fetched file is replaced by the
//! fuzzer's bytes (split into pieces, one per fetch).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_core::client::{Action, Client, Config, Fetched};
use rampart_core::testing::{test_now, TestRepo};
use std::sync::OnceLock;

fn root() -> &'static Vec<u8> {
    static ROOT: OnceLock<Vec<u8>> = OnceLock::new();
    ROOT.get_or_init(|| TestRepo::new(test_now()).initial_root())
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut client) = Client::new("fuzz", root(), test_now(), Config::default()) else { return };
    client.start_refresh();
    let mut pieces = data.split(|b| *b == 0xff);
    for _ in 0..32 {
        let Ok(action) = client.next_action() else { return };
        let step = match action {
            Action::ReadLocal { .. } => client.provide_local(None),
            Action::Fetch { path, .. } => {
                let fetched = match pieces.next() {
                    Some(p) if !p.is_empty() => Fetched::Bytes(p.to_vec()),
                    _ => Fetched::NotFound,
                };
                client.provide_fetched(&path, fetched)
            }
            Action::Persist { .. } | Action::Remove { .. } => Ok(()),
            Action::Done => return,
        };
        if step.is_err() {
            return;
        }
    }
});
