//! Measure 2: the image path. `image-prepare` writes a plaintext image and its STREAM
//! ciphertext (64 KiB chunks, as `rampart publish --encrypt` makes them) where a server serves
//! it; `image-fetch` then does what the vehicle does with it, in one process:
//! `rampart_client::download_target` (bounded download into `NAME#partial`, ciphertext length
//! and sha256 checked while streaming — the ciphertext's one signed hash — fsync, rename), then
//! `rampart_core::encryption::Decryptor` from that file into an output file with the
//! plaintext's length and sha256 + sha512 checked while streaming (as the ECU's receive path
//! does) through the slot's writer (`rampart_client::SlotFile`: direct I/O), fsync. `bench/run` measures its peak RSS with `/usr/bin/time -v`.
//! With `--params-sha256-only PATH`, `image-prepare` also writes the parameters of the same
//! image listed with SHA-256 alone (`rampart publish --hash sha256`), which `image-fetch`
//! then checks with one hash instead of two.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use aws_lc_rs::digest;
use rampart_client::{download_target, FetchConfig, HttpFetcher, TlsConfig};
use rampart_core::encryption::{ContentKey, Decryptor, Encryptor, DEFAULT_CHUNK_SIZE};
use rampart_core::hash::{Hashes, StreamVerifier};
use serde_json::{json, Value};

use crate::Args;

const BLOCK: usize = 1024 * 1024;

struct Hasher {
    sha256: digest::Context,
    sha512: digest::Context,
}

impl Hasher {
    fn new() -> Self {
        Hasher {
            sha256: digest::Context::new(&digest::SHA256),
            sha512: digest::Context::new(&digest::SHA512),
        }
    }
    fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.sha512.update(data);
    }
    fn finish(self) -> Hashes {
        let mut h = Hashes::new();
        h.insert("sha256".into(), hex::encode(self.sha256.finish()));
        h.insert("sha512".into(), hex::encode(self.sha512.finish()));
        h
    }
}

/// Deterministic, incompressible bytes (xorshift64*), fast enough not to matter.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            for (d, s) in chunk.iter_mut().zip(v.iter()) {
                *d = *s;
            }
        }
    }
}

/// `image-prepare --size BYTES --plain PATH --cipher PATH --params PATH`.
pub(crate) fn prepare(args: &Args) -> anyhow::Result<Value> {
    let size: u64 = args.num("size", 100 * 1024 * 1024)?;
    let plain_path = PathBuf::from(args.req("plain")?);
    let cipher_path = PathBuf::from(args.req("cipher")?);
    let params_path = PathBuf::from(args.req("params")?);
    for p in [&plain_path, &cipher_path, &params_path] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
    }
    let key = ContentKey::generate()?;
    let mut enc = Encryptor::new(&key, DEFAULT_CHUNK_SIZE)?;
    let mut plain = BufWriter::new(File::create(&plain_path)?);
    let mut cipher = BufWriter::new(File::create(&cipher_path)?);
    let mut ph = Hasher::new();
    // The ciphertext gets one hash, as `rampart publish --encrypt` lists it.
    let mut ch = digest::Context::new(&digest::SHA256);
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15 ^ size);
    let mut block = vec![0u8; BLOCK];
    let mut out = Vec::with_capacity(BLOCK + 4096);
    let (mut left, mut ct_len) = (size, 0u64);
    while left > 0 {
        let n = usize::try_from(left.min(BLOCK as u64))?;
        let piece = block.get_mut(..n).context("block")?;
        noise.fill(piece);
        plain.write_all(piece)?;
        ph.update(piece);
        out.clear();
        enc.update(piece, &mut out)?;
        ch.update(&out);
        cipher.write_all(&out)?;
        ct_len += out.len() as u64;
        left -= n as u64;
    }
    out.clear();
    enc.finish(&mut out)?;
    ch.update(&out);
    cipher.write_all(&out)?;
    ct_len += out.len() as u64;
    plain.flush()?;
    cipher.flush()?;
    let params = json!({
        "key": hex::encode(key.as_bytes()),
        "plaintext": {"length": size, "hashes": ph.finish()},
        "ciphertext": {"length": ct_len, "hashes": {"sha256": hex::encode(ch.finish())}},
    });
    std::fs::write(&params_path, serde_json::to_vec_pretty(&params)?)?;
    // The same image as `rampart publish --hash sha256` lists it: one hash to check.
    if let Some(path) = args.get("params-sha256-only") {
        let mut only = params.clone();
        if let Some(h) = only
            .pointer_mut("/plaintext/hashes")
            .and_then(Value::as_object_mut)
        {
            h.retain(|k, _| k == "sha256");
        }
        std::fs::write(path, serde_json::to_vec_pretty(&only)?)?;
    }
    Ok(params)
}

fn file_spec(v: &Value, which: &str) -> anyhow::Result<(u64, Hashes)> {
    let f = v.get(which).with_context(|| format!("params: {which}"))?;
    let length = f
        .get("length")
        .and_then(Value::as_u64)
        .context("params: length")?;
    let hashes: Hashes = serde_json::from_value(f.get("hashes").cloned().unwrap_or_default())?;
    Ok((length, hashes))
}

/// `image-fetch --url URL --params PATH --dir DIR`.
pub(crate) fn fetch(args: &Args) -> anyhow::Result<Value> {
    let url = args.req("url")?.to_owned();
    let params: Value = serde_json::from_slice(&std::fs::read(args.req("params")?)?)?;
    let dir = PathBuf::from(args.req("dir")?);
    std::fs::create_dir_all(&dir)?;
    let key = ContentKey::from_bytes(&hex::decode(
        params
            .get("key")
            .and_then(Value::as_str)
            .context("params: key")?,
    )?)?;
    let (ct_len, ct_hashes) = file_spec(&params, "ciphertext")?;
    let (pt_len, pt_hashes) = file_spec(&params, "plaintext")?;
    let download = dir.join("image.enc");
    let slot = dir.join("slot-b");
    let _ = std::fs::remove_file(&download);
    let _ = std::fs::remove_file(&slot);

    let started = Instant::now();
    // The agent's runtime: one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetcher = HttpFetcher::new(FetchConfig::default(), &TlsConfig::default())?;
    let outcome = rt.block_on(download_target(
        &fetcher,
        &url,
        &download,
        ct_len,
        &ct_hashes,
        &mut |_, _| {},
    ))?;
    let downloaded = started.elapsed().as_secs_f64();

    // Decrypt into the slot, checking the plaintext's length and hashes as it goes.
    let mut input = File::open(&download)?;
    // The ECU's slot writer: direct I/O where the file system takes it.
    let mut output = rampart_client::SlotFile::create(&slot, false)?;
    let mut dec = Decryptor::new(&key);
    let mut verifier = StreamVerifier::new("image", Some(pt_len), pt_len, Some(&pt_hashes))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(128 * 1024);
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.clear();
        dec.update(buf.get(..n).unwrap_or_default(), &mut out)?;
        verifier.update(&out)?;
        output.write_all(&out)?;
    }
    out.clear();
    dec.finish(&mut out)?;
    verifier.update(&out)?;
    output.write_all(&out)?;
    let written = verifier.finish()?;
    drop(output.sync_all()?);
    let total = started.elapsed().as_secs_f64();
    if written != pt_len {
        bail!("wrote {written} bytes, expected {pt_len}");
    }
    let _ = std::fs::remove_file(&download);
    let _ = std::fs::remove_file(&slot);
    Ok(json!({
        "outcome": format!("{outcome:?}"),
        "plaintext_bytes": pt_len,
        "ciphertext_bytes": ct_len,
        "download_s": downloaded,
        "decrypt_s": total - downloaded,
        "total_s": total,
        "mib_per_s": pt_len as f64 / (1024.0 * 1024.0) / total,
    }))
}

/// `crypto-speed`: MiB/s of aws-lc-rs SHA-256 and SHA-512 on this machine (16 MiB in memory,
/// best of 3) and microseconds per ed25519 verification of a 1 KiB message (best of 3 × 2000),
/// so that the report can say how much of the image path hashing alone takes and how much of
/// a check-in its four signatures take. A separate process: its buffer must not count in
/// `image-fetch`'s peak RSS.
pub(crate) fn crypto_speed(_args: &Args) -> anyhow::Result<Value> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
    let mut data = vec![0u8; 16 * 1024 * 1024];
    Noise(42).fill(&mut data);
    let best = |alg: &'static digest::Algorithm| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(digest::digest(alg, &data));
                16.0 / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
    };
    let pair = Ed25519KeyPair::generate()?;
    let message = data.get(..1024).context("message")?;
    let signature = pair.sign(message);
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    let mut verify_us = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..2000 {
            public
                .verify(message, signature.as_ref())
                .map_err(|_| anyhow::anyhow!("ed25519 verification failed"))?;
        }
        verify_us = verify_us.min(t.elapsed().as_secs_f64() * 1e6 / 2000.0);
    }
    Ok(json!({
        "sha256_mib_per_s": best(&digest::SHA256),
        "sha512_mib_per_s": best(&digest::SHA512),
        "ed25519_verify_us": verify_us,
    }))
}
