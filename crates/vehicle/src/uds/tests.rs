//! The bootloader's rules, one request at a time (no transport).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;
use std::time::{Duration, Instant};

use super::bootloader::{Bootloader, BootloaderConfig};
use super::service::{security_key, Session, SECURITY_LEVEL};
use crate::testing::{image_bytes, TestDirector};

const VIN: &str = "VIN00000000000001";
const ECU: &str = "BCM-1";
const HW: &str = "bcm";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

struct Fixture {
    dir: tempfile::TempDir,
    director: TestDirector,
    now: Instant,
}

fn config(dir: &Path) -> BootloaderConfig {
    let mut c = super::entity::UdsEcuConfig::in_folder(dir, ECU, HW, VIN);
    c.bank_size = 1 << 20;
    c.max_block_length = 1026;
    c.boot_software_id = "boot 1".into();
    c.bootloader()
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let director = TestDirector::new();
        std::fs::write(dir.path().join("director-root.json"), director.root()).unwrap();
        std::fs::write(dir.path().join("bank-a"), b"factory image").unwrap();
        Fixture {
            dir,
            director,
            now: Instant::now(),
        }
    }

    fn open(&self) -> Bootloader {
        Bootloader::open(config(self.dir.path()), SECRET.to_vec(), self.now).unwrap()
    }

    fn tick(&mut self, d: Duration) -> Instant {
        self.now += d;
        self.now
    }
}

fn ask(b: &mut Bootloader, now: Instant, req: &[u8]) -> Vec<u8> {
    b.handle(req, now).response.unwrap_or_default()
}

fn unlock(b: &mut Bootloader, now: Instant) {
    assert_eq!(ask(b, now, &[0x10, 0x02])[..2], [0x50, 0x02]);
    let seed = ask(b, now, &[0x27, 0x01]);
    assert_eq!(seed[..2], [0x67, 0x01]);
    let key = security_key(SECRET, SECURITY_LEVEL, &seed[2..]);
    let mut req = vec![0x27, 0x02];
    req.extend_from_slice(&key);
    assert_eq!(ask(b, now, &req), [0x67, 0x02]);
}

/// Erase, download and exit: the whole image in the inactive bank.
fn download(b: &mut Bootloader, now: Instant, image: &[u8]) {
    assert_eq!(
        ask(b, now, &[0x31, 0x01, 0xFF, 0x00]),
        [0x71, 0x01, 0xFF, 0x00, 0x00]
    );
    let size = (image.len() as u32).to_be_bytes();
    let mut req = vec![0x34, 0x00, 0x44, 0, 0, 0, 0];
    req.extend_from_slice(&size);
    let answer = ask(b, now, &req);
    assert_eq!(answer[..2], [0x74, 0x20]);
    let block = usize::from(u16::from_be_bytes([answer[2], answer[3]])) - 2;
    for (i, chunk) in image.chunks(block).enumerate() {
        let counter = ((i + 1) % 256) as u8;
        let mut req = vec![0x36, counter];
        req.extend_from_slice(chunk);
        assert_eq!(ask(b, now, &req), [0x76, counter]);
    }
    assert_eq!(ask(b, now, &[0x37]), [0x77]);
}

fn verify(b: &mut Bootloader, now: Instant, metadata: &[u8]) -> Vec<u8> {
    let mut req = vec![0x31, 0x01, 0xFF, 0x01];
    req.extend_from_slice(metadata);
    ask(b, now, &req)
}

fn read(b: &mut Bootloader, now: Instant, did: u16) -> Vec<u8> {
    let [x, y] = did.to_be_bytes();
    let answer = ask(b, now, &[0x22, x, y]);
    assert_eq!(answer[..3], [0x62, x, y], "{answer:02X?}");
    answer[3..].to_vec()
}

fn rules(b: &Bootloader) -> String {
    b.indicators().clone().report(0)
}

#[test]
fn a_signed_image_is_flashed_and_boots_after_reset() {
    let mut f = Fixture::new();
    let image = image_bytes("bcm-2", 5000);
    let metadata = f.director.assign(VIN, ECU, HW, "bcm-2.bin", &image, 2);
    let mut b = f.open();
    let now = f.now;
    assert_eq!(read(&mut b, now, 0xF189), b"factory");
    assert_eq!(read(&mut b, now, 0xF190), VIN.as_bytes());
    assert_eq!(read(&mut b, now, 0xF18C), ECU.as_bytes());
    unlock(&mut b, now);
    download(&mut b, now, &image);
    assert_eq!(
        verify(&mut b, now, &metadata),
        [0x71, 0x01, 0xFF, 0x01, 0x00]
    );
    // Not running yet: the verified bank boots at the next reset.
    assert_eq!(read(&mut b, now, 0xF189), b"factory");
    let answer = b.handle(&[0x11, 0x01], now);
    assert_eq!(answer.response.unwrap(), [0x51, 0x01]);
    assert!(answer.reset);
    assert_eq!(b.session(), Session::Default);
    assert_eq!(read(&mut b, now, 0xF189), b"bcm-2.bin");
    let running = read(&mut b, now, 0xF1A0);
    assert_eq!(&running[..8], &5000u64.to_be_bytes());
    assert_eq!(&running[8..16], &2u64.to_be_bytes());
    assert_eq!(&running[16..48], &rampart_core::hash::sha256(&image));
    assert_eq!(
        &running[48..],
        rampart_core::hash::sha512(&image).as_slice()
    );
    // And after a power cycle.
    drop(b);
    let mut b = f.open();
    assert_eq!(read(&mut b, now, 0xF189), b"bcm-2.bin");
    assert!(rules(&b).is_empty());
}

#[test]
fn programming_without_security_access_is_refused_and_recorded() {
    let f = Fixture::new();
    let mut b = f.open();
    let now = f.now;
    // Default session: the service is not served there at all.
    assert_eq!(
        ask(&mut b, now, &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0]),
        [0x7F, 0x34, 0x7F]
    );
    assert_eq!(ask(&mut b, now, &[0x27, 0x01]), [0x7F, 0x27, 0x7F]);
    assert_eq!(ask(&mut b, now, &[0x10, 0x02])[..2], [0x50, 0x02]);
    for req in [
        &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0][..],
        &[0x31, 0x01, 0xFF, 0x00],
    ] {
        assert_eq!(ask(&mut b, now, req), [0x7F, req[0], 0x33]);
    }
    assert!(
        rules(&b).contains("security-access-denied"),
        "{}",
        rules(&b)
    );
}

#[test]
fn wrong_keys_lock_security_access_for_the_delay_even_across_a_reset() {
    let mut f = Fixture::new();
    let mut b = f.open();
    let now = f.now;
    ask(&mut b, now, &[0x10, 0x02]);
    let wrong = |b: &mut Bootloader, now| {
        let seed = ask(b, now, &[0x27, 0x01]);
        assert_eq!(seed[..2], [0x67, 0x01], "{seed:02X?}");
        let mut req = vec![0x27, 0x02];
        req.extend_from_slice(&[0xAA; 16]);
        ask(b, now, &req)
    };
    assert_eq!(wrong(&mut b, now), [0x7F, 0x27, 0x35]);
    assert_eq!(wrong(&mut b, now), [0x7F, 0x27, 0x35]);
    assert_eq!(wrong(&mut b, now), [0x7F, 0x27, 0x36]);
    assert_eq!(ask(&mut b, now, &[0x27, 0x01]), [0x7F, 0x27, 0x37]);
    // A key without a seed is out of sequence; a key of the wrong length is malformed.
    assert_eq!(ask(&mut b, now, &[0x27, 0x02, 1, 2]), [0x7F, 0x27, 0x24]);
    // A power cycle does not reset the count: the delay runs again from the boot.
    drop(b);
    let mut b = f.open();
    let now = f.tick(Duration::from_secs(1));
    ask(&mut b, now, &[0x10, 0x02]);
    assert_eq!(ask(&mut b, now, &[0x27, 0x01]), [0x7F, 0x27, 0x37]);
    // After the delay: one more try, and the right key unlocks.
    let now = f.tick(Duration::from_secs(11));
    ask(&mut b, now, &[0x3E, 0x00]);
    unlock(&mut b, now);
    let log = rules(&b);
    assert!(
        log.contains("invalid-security-key") && log.contains("security-delay"),
        "{log}"
    );
}

#[test]
fn blocks_out_of_sequence_or_too_long_are_refused_and_a_repeat_is_not_written_twice() {
    let f = Fixture::new();
    let mut b = f.open();
    let now = f.now;
    unlock(&mut b, now);
    assert_eq!(ask(&mut b, now, &[0x36, 0x01, 0]), [0x7F, 0x36, 0x24]);
    ask(&mut b, now, &[0x31, 0x01, 0xFF, 0x00]);
    assert_eq!(
        ask(&mut b, now, &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x08, 0]),
        [0x74, 0x20, 0x04, 0x02]
    );
    let block = |counter: u8, len: usize| {
        let mut r = vec![0x36, counter];
        r.extend(std::iter::repeat_n(counter, len));
        r
    };
    assert_eq!(ask(&mut b, now, &block(2, 1024)), [0x7F, 0x36, 0x73]);
    assert_eq!(ask(&mut b, now, &block(1, 1025)), [0x7F, 0x36, 0x13]);
    assert_eq!(ask(&mut b, now, &block(1, 1024)), [0x76, 0x01]);
    // The response was lost and the tester repeats: acknowledged, not written again.
    assert_eq!(ask(&mut b, now, &block(1, 1024)), [0x76, 0x01]);
    assert_eq!(ask(&mut b, now, &[0x37]), [0x7F, 0x37, 0x24]);
    assert_eq!(ask(&mut b, now, &block(3, 1024)), [0x7F, 0x36, 0x73]);
    assert_eq!(ask(&mut b, now, &block(2, 1024)), [0x76, 0x02]);
    assert_eq!(ask(&mut b, now, &block(3, 1)), [0x7F, 0x36, 0x71]);
    let log = rules(&b);
    assert!(
        log.contains("block-sequence") && log.contains("diagnostic-request"),
        "{log}"
    );
}

#[test]
fn the_verify_routine_refuses_an_image_the_director_did_not_sign_and_the_bank_stays() {
    let mut f = Fixture::new();
    let signed = image_bytes("bcm-2", 3000);
    let mut other = signed.clone();
    other[1500] ^= 1;
    let metadata = f.director.assign(VIN, ECU, HW, "bcm-2.bin", &signed, 2);
    let mut b = f.open();
    let now = f.now;
    unlock(&mut b, now);
    download(&mut b, now, &other);
    let answer = verify(&mut b, now, &metadata);
    assert_eq!(answer[..5], [0x71, 0x01, 0xFF, 0x01, 0x01]);
    assert_eq!(&answer[5..], b"hash-mismatch");
    // Metadata for another vehicle, or forged, fails the same way (after a fresh download).
    let mut forged = metadata.clone();
    let at = forged.windows(7).position(|w| w == b"bcm-2.b").unwrap();
    forged[at] = b'x';
    download(&mut b, now, &signed);
    let answer = verify(&mut b, now, &forged);
    assert_eq!(answer[4], 0x01, "{answer:02X?}");
    b.handle(&[0x11, 0x01], now);
    assert_eq!(read(&mut b, now, 0xF189), b"factory");
    assert!(rules(&b).contains("hash-mismatch"));
    // A verify without a complete download is out of sequence.
    unlock(&mut b, now);
    let mut req = vec![0x31, 0x01, 0xFF, 0x01];
    req.extend_from_slice(&metadata);
    assert_eq!(ask(&mut b, now, &req), [0x7F, 0x31, 0x24]);
}

#[test]
fn an_older_release_or_replayed_director_targets_are_refused_by_the_verify_routine() {
    let mut f = Fixture::new();
    let v3 = image_bytes("bcm-3", 2000);
    let v1 = image_bytes("bcm-1", 2000);
    let v4 = image_bytes("bcm-4", 2000);
    let m3 = f.director.assign(VIN, ECU, HW, "bcm-3.bin", &v3, 3);
    let m1 = f.director.assign(VIN, ECU, HW, "bcm-1.bin", &v1, 1);
    let m4 = f.director.assign(VIN, ECU, HW, "bcm-4.bin", &v4, 4);
    let mut b = f.open();
    let now = f.now;
    let flash = |b: &mut Bootloader, image: &[u8], metadata: &[u8]| {
        unlock(b, now);
        download(b, now, image);
        let answer = verify(b, now, metadata);
        b.handle(&[0x11, 0x01], now);
        String::from_utf8_lossy(&answer[4..]).into_owned()
    };
    assert_eq!(flash(&mut b, &v3, &m3), "\0");
    // Newer director targets, older release: the image's release counter decreases.
    assert_eq!(flash(&mut b, &v1, &m1), "\u{1}release-counter-decreased");
    assert_eq!(flash(&mut b, &v4, &m4), "\0");
    // The director targets that once installed v3, replayed: older metadata.
    assert_eq!(flash(&mut b, &v3, &m3), "\u{1}rollback");
    assert_eq!(read(&mut b, now, 0xF189), b"bcm-4.bin");
}

#[test]
fn an_interrupted_flash_leaves_the_running_bank_and_s3_ends_the_session() {
    let mut f = Fixture::new();
    let image = image_bytes("bcm-2", 4000);
    let mut b = f.open();
    let now = f.now;
    unlock(&mut b, now);
    ask(&mut b, now, &[0x31, 0x01, 0xFF, 0x00]);
    ask(
        &mut b,
        now,
        &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x0F, 0xA0],
    );
    let mut req = vec![0x36, 0x01];
    req.extend_from_slice(&image[..1024]);
    assert_eq!(ask(&mut b, now, &req), [0x76, 0x01]);
    // The tester goes quiet past S3: default session, locked, download abandoned.
    let now = f.tick(Duration::from_secs(6));
    assert_eq!(read(&mut b, now, 0xF186), [0x01]);
    ask(&mut b, now, &[0x10, 0x02]);
    assert_eq!(ask(&mut b, now, &[0x36, 0x02, 0]), [0x7F, 0x36, 0x24]);
    // Power cut in the middle of a transfer: the bank that runs is the one that ran.
    unlock(&mut b, now);
    ask(&mut b, now, &[0x31, 0x01, 0xFF, 0x00]);
    ask(
        &mut b,
        now,
        &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x0F, 0xA0],
    );
    ask(&mut b, now, &req);
    drop(b);
    let mut b = f.open();
    assert_eq!(read(&mut b, now, 0xF189), b"factory");
    let running = read(&mut b, now, 0xF1A0);
    assert_eq!(
        &running[16..48],
        &rampart_core::hash::sha256(b"factory image")
    );
}

#[test]
fn malformed_and_unknown_requests_get_their_negative_responses() {
    let f = Fixture::new();
    let mut b = f.open();
    let now = f.now;
    assert_eq!(ask(&mut b, now, &[0x85, 0x01]), [0x7F, 0x85, 0x11]);
    assert_eq!(ask(&mut b, now, &[0x10, 0x09]), [0x7F, 0x10, 0x12]);
    assert_eq!(ask(&mut b, now, &[0x10]), [0x7F, 0x10, 0x13]);
    assert_eq!(ask(&mut b, now, &[0x22, 0xF1]), [0x7F, 0x22, 0x13]);
    assert_eq!(ask(&mut b, now, &[0x22, 0x12, 0x34]), [0x7F, 0x22, 0x31]);
    assert_eq!(
        ask(&mut b, now, &[0x31, 0x01, 0x12, 0x34]),
        [0x7F, 0x31, 0x31]
    );
    assert_eq!(ask(&mut b, now, &[0x3E, 0x00]), [0x7E, 0x00]);
    assert!(b.handle(&[0x3E, 0x80], now).response.is_none());
    assert_eq!(ask(&mut b, now, &[0x11, 0x7F]), [0x7F, 0x11, 0x12]);
    unlock(&mut b, now);
    ask(&mut b, now, &[0x31, 0x01, 0xFF, 0x00]);
    // Compression, an address outside the bank, a size beyond it, a bad format.
    assert_eq!(
        ask(&mut b, now, &[0x34, 0x11, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0]),
        [0x7F, 0x34, 0x31]
    );
    assert_eq!(
        ask(
            &mut b,
            now,
            &[0x34, 0x00, 0x44, 0, 0, 0x10, 0, 0, 0, 0x10, 0]
        ),
        [0x7F, 0x34, 0x31]
    );
    assert_eq!(
        ask(&mut b, now, &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0x10, 0, 0, 0]),
        [0x7F, 0x34, 0x31]
    );
    assert_eq!(
        ask(&mut b, now, &[0x34, 0x00, 0x44, 0, 0]),
        [0x7F, 0x34, 0x13]
    );
    // A download needs an erased bank.
    ask(&mut b, now, &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0]);
    ask(&mut b, now, &[0x10, 0x02]);
    unlock(&mut b, now);
    assert_eq!(
        ask(&mut b, now, &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0]),
        [0x7F, 0x34, 0x70]
    );
}

#[test]
fn the_security_log_is_cleared_only_with_security_access_and_only_up_to_the_read_reported() {
    let f = Fixture::new();
    let mut b = f.open();
    let now = f.now;
    ask(&mut b, now, &[0x10, 0x02]);
    ask(&mut b, now, &[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0]);
    let first = read(&mut b, now, 0xF1A2);
    assert_eq!(&first[..8], &1u64.to_be_bytes());
    assert!(String::from_utf8_lossy(&first[8..]).contains("security-access-denied"));
    // Something new happens after the read.
    ask(&mut b, now, &[0x27, 0x02, 0, 0]);
    // Without security access the log stays (and the attempt is one more indicator).
    assert_eq!(
        ask(
            &mut b,
            now,
            &[0x31, 0x01, 0xFF, 0x02, 0, 0, 0, 0, 0, 0, 0, 1]
        ),
        [0x7F, 0x31, 0x33]
    );
    unlock(&mut b, now);
    // A number never read is out of range.
    assert_eq!(
        ask(
            &mut b,
            now,
            &[0x31, 0x01, 0xFF, 0x02, 0, 0, 0, 0, 0, 0, 0, 9]
        ),
        [0x7F, 0x31, 0x31]
    );
    assert_eq!(
        ask(
            &mut b,
            now,
            &[0x31, 0x01, 0xFF, 0x02, 0, 0, 0, 0, 0, 0, 0, 1]
        )[..5],
        [0x71, 0x01, 0xFF, 0x02, 0x00]
    );
    let second = read(&mut b, now, 0xF1A2);
    let text = String::from_utf8_lossy(&second[8..]).into_owned();
    assert!(!text.contains("service 0x34"), "{text}");
    assert!(
        text.contains("diagnostic-request") || text.contains("security-access-denied"),
        "{text}"
    );
}

/// Garbage from the bus — random requests, with and without security access, most starting
/// with a real service ID — gets answers, never a panic, and never changes what runs.
#[test]
fn random_requests_never_panic_nor_change_the_running_bank() {
    let f = Fixture::new();
    let mut b = f.open();
    let now = f.now;
    let mut rng = crate::testing::Rng::new(0x5eed);
    let services = [0x10, 0x11, 0x22, 0x27, 0x31, 0x34, 0x36, 0x37, 0x3E, 0x85];
    for round in 0..4000u64 {
        if round == 2000 {
            unlock(&mut b, now);
            ask(&mut b, now, &[0x31, 0x01, 0xFF, 0x00]);
        }
        let len = rng.below(40) as usize;
        let mut req: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(first) = req.first_mut() {
            if rng.chance(90) {
                *first = services[rng.below(services.len() as u64) as usize];
            }
        }
        // A reset is not garbage: keep the session the loop is testing.
        if req.first() == Some(&0x11) || req.starts_with(&[0x10]) {
            continue;
        }
        let answer = b.handle(&req, now);
        if let Some(r) = answer.response {
            assert!(!r.is_empty(), "{req:02X?}");
        }
    }
    b.handle(&[0x11, 0x01], now);
    assert_eq!(read(&mut b, now, 0xF189), b"factory");
}
