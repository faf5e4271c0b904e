//! The gateway's UDS tester against the UDS ECU, in process over loopback DoIP: a flash that
//! the ECU's verify routine refuses (tampered image), a wrong secret, the real flash with its
//! read-back, and the security log that only the gateway with security access may clear.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::Arc;

use rampart_core::rule::Rule;
use rampart_vehicle::error::Error;
use rampart_vehicle::report::{LogReporter, Progress};
use rampart_vehicle::testing::{image_bytes, TestDirector};
use rampart_vehicle::uds::entity::start;
use rampart_vehicle::uds::gateway::{clear_log, read_state, Flash, UdsLink};
use rampart_vehicle::uds::UdsEcuConfig;

const VIN: &str = "WRAMP000000000007";
const ECU: &str = "BCM-7";
const HW: &str = "bcm";

struct Count(u64);

impl Progress for Count {
    fn set(&mut self, done: u64) {
        self.0 = done;
    }
    fn finish(self: Box<Self>) {}
}

fn secret_file(path: &Path, hex: &str) {
    std::fs::write(path, hex).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_flashes_a_legacy_ecu_and_the_ecu_checks_what_the_director_signed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut director = TestDirector::new();
    std::fs::write(d.join("director-root.json"), director.root()).unwrap();
    std::fs::write(d.join("bank-a"), b"factory").unwrap();
    secret_file(&d.join("security-secret.hex"), &"ab".repeat(32));
    secret_file(&d.join("gateway-secret.hex"), &"ab".repeat(32));
    secret_file(&d.join("wrong-secret.hex"), &"cd".repeat(32));
    let ecu = start(
        UdsEcuConfig::in_folder(d, ECU, HW, VIN),
        Arc::new(LogReporter),
    )
    .await
    .unwrap();
    let address = ecu.addr().to_string();
    tokio::spawn(ecu.serve());

    let link = UdsLink {
        logical_address: 0x0010,
        tester_address: 0x0E80,
        security_secret: d.join("gateway-secret.hex"),
    };
    let before = read_state(&address, &link, ECU).await.unwrap();
    assert_eq!(before.image.filename, "factory");
    assert_eq!(
        before.image.hashes,
        rampart_core::hash::compute_hashes(b"factory")
    );

    let image = image_bytes("bcm-2", 200_000);
    let mut tampered = image.clone();
    tampered[100] ^= 1;
    std::fs::write(d.join("image"), &image).unwrap();
    std::fs::write(d.join("tampered"), &tampered).unwrap();
    let targets = director.assign(VIN, ECU, HW, "bcm-2.bin", &image, 2);
    let flash = |file: &'static str, link: UdsLink| {
        let (address, targets, path) = (address.clone(), targets.clone(), d.join(file));
        let length = std::fs::metadata(&path).unwrap().len();
        async move {
            let mut progress = Count(0);
            let result = Flash {
                address: &address,
                link: &link,
                ecu_id: ECU,
                target: "bcm-2.bin",
                image: &path,
                length,
                director_targets: &targets,
            }
            .run(&mut progress)
            .await;
            (result, progress.0)
        }
    };

    // The ECU's verify routine is the second line: a tampered image never boots.
    let (result, sent) = flash("tampered", link.clone()).await;
    match result {
        Err(Error::EcuRefused { rule, .. }) => assert_eq!(rule, Rule::HashMismatch),
        other => panic!("{other:?}"),
    }
    assert_eq!(sent, 200_000);
    // A gateway with the wrong secret gets no further than security access.
    let wrong = UdsLink {
        security_secret: d.join("wrong-secret.hex"),
        ..link.clone()
    };
    match flash("image", wrong).await.0 {
        Err(e @ Error::Diagnostic { .. }) => {
            assert_eq!(e.rule(), Rule::InvalidSecurityKey, "{e}");
            assert!(e.to_string().contains("NRC 0x35"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        read_state(&address, &link, ECU)
            .await
            .unwrap()
            .image
            .filename,
        "factory"
    );

    let (result, _) = flash("image", link.clone()).await;
    result.unwrap();
    let after = read_state(&address, &link, ECU).await.unwrap();
    assert_eq!(after.image.filename, "bcm-2.bin");
    assert_eq!(after.image.length, 200_000);
    assert_eq!(after.image.release_counter, 2);
    assert_eq!(
        after.image.hashes,
        rampart_core::hash::compute_hashes(&image)
    );

    // What the ECU refused is in its log until the gateway clears the read it reported.
    assert!(after.log.contains("hash-mismatch"), "{}", after.log);
    assert!(after.log.contains("invalid-security-key"), "{}", after.log);
    clear_log(&address, &link, ECU, after.log_read)
        .await
        .unwrap();
    let cleared = read_state(&address, &link, ECU).await.unwrap();
    assert!(cleared.log.is_empty(), "{}", cleared.log);
}
