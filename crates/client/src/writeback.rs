//! Writing large files so that the final `fsync` does not stall.
//!
//! Linux starts writing dirty pages back only when a tenth of RAM is dirty or after 30 s, so
//! a gigabyte image written by a fast producer sits in the page cache until the closing
//! `fsync`, which then writes all of it while nothing else happens (≈ 1.7 s per GiB on the
//! benchmark machine's disk, see BENCHMARKS.md). [`WriteBehind`] asks the kernel to start
//! writing each [`WINDOW`] back as soon as it is complete (`posix_fadvise(POSIX_FADV_DONTNEED)`
//! on the window just written: Linux starts asynchronous writeback of its dirty pages and
//! does not wait), so the disk works while the next window is downloaded, hashed and
//! decrypted, and the `fsync` at the end only waits for what is still in flight. On a T-BOX it
//! also keeps an image from filling RAM with dirty pages. Pages that are still dirty or under
//! writeback when the advice is given stay cached — which is nearly all of the window — so a
//! reader right after (the primary streaming the image to an ECU) still finds them in memory.
//!
//! Measured on the 1 GiB image path (BENCHMARKS.md), same session: plain writes with one
//! `fsync` at the end ≈ 230 MiB/s, with this ≈ 265 MiB/s; a helper thread calling
//! `fdatasync` per window was within noise of this, so the simpler hint was kept.
//! The advice is only a hint: where it is not supported nothing changes and the final
//! `fsync` does the work. Durability is unchanged: callers `fsync` ([`WriteBehind::sync_all`])
//! before they trust the file.

use std::fs::File;
use std::io::Write;

/// Bytes after which writeback of the completed range is started.
pub const WINDOW: u64 = 8 * 1024 * 1024;

/// A file being written sequentially, written back to disk window by window.
#[derive(Debug)]
pub struct WriteBehind {
    file: File,
    written: u64,
    started_at: u64,
    windows: u32,
}

impl WriteBehind {
    /// Wraps `file`, whose next write lands at `offset` (0 for a new file, the current length
    /// when appending).
    pub fn new(file: File, offset: u64) -> Self {
        WriteBehind {
            file,
            written: offset,
            started_at: offset,
            windows: 0,
        }
    }

    /// Writes all of `data`; starts writeback of every completed window.
    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.written = self.written.saturating_add(data.len() as u64);
        if let Some(len) =
            std::num::NonZeroU64::new(self.written - self.started_at).filter(|l| l.get() >= WINDOW)
        {
            start_writeback(&self.file, self.started_at, len);
            self.started_at = self.written;
            self.windows += 1;
        }
        Ok(())
    }

    /// Truncates the file to zero length and starts over at offset 0.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.written = 0;
        self.started_at = 0;
        Ok(())
    }

    /// Flushes everything to stable storage (`fsync`) and hands the file back.
    pub fn sync_all(self) -> std::io::Result<File> {
        self.file.sync_all()?;
        Ok(self.file)
    }

    /// Windows whose writeback was started early.
    pub fn windows(&self) -> u32 {
        self.windows
    }
}

/// Starts writeback of `len` bytes at `offset` without waiting (a hint; errors ignored).
fn start_writeback(file: &File, offset: u64, len: std::num::NonZeroU64) {
    if let Err(e) = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed) {
        tracing::trace!(%e, "fadvise not supported here; writeback left to fsync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_everything_across_windows_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..WINDOW * 3 + 4321).map(|i| (i % 251) as u8).collect();
        let mut w = WriteBehind::new(File::create(&path).unwrap(), 0);
        for chunk in data.chunks(64 * 1024 + 3) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.windows(), 3, "writeback started for each full window");
        w.sync_all().unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);

        let mut w = WriteBehind::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap(),
            data.len() as u64,
        );
        w.restart().unwrap();
        w.write_all(b"again").unwrap();
        w.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
    }
}
