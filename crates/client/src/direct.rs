//! Writing an image into a slot with direct I/O (`O_DIRECT`), past the page cache.
//!
//! An ECU writes an image once into its inactive slot, reads it back once to check it, and
//! boots it; nothing reads the written bytes from memory. Written through the page cache,
//! every byte is first copied into a cache page (which a large image must first fault in:
//! on the benchmark VM a gigabyte of such pages costs more than hashing the image, see
//! BENCHMARKS.md), then written back by the kernel, and the read-back finds the cache, not
//! the medium. [`DirectWriter`] instead fills aligned buffers and writes each one straight to
//! the device on a helper thread while the caller fills the next (two buffers of [`BUFFER`]
//! bytes: memory stays constant), and [`DirectWriter::sync_all`] flushes the device cache.
//! The read-back that follows then reads what the medium holds. This is how images are
//! written to raw flash partitions too, where the slots of a real ECU live.
//!
//! Direct I/O needs the buffer, the file offset and the length aligned to the device's
//! block ([`ALIGN`] covers the 512-byte and 4 KiB sectors of eMMC, NVMe and virtio disks).
//! The last, partial block is padded with zeros; a regular file is then cut to the
//! image's length (a partition keeps the padding after the image, which no reader of the
//! slot reads: they stop at the signed length). Where the file system refuses `O_DIRECT`
//! (tmpfs, some FUSE and network file systems) the open falls back to [`WriteBehind`]'s
//! buffered writes, and a device that refuses an aligned direct write has the flag
//! cleared and is written buffered from there on: an image is never refused for it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use crate::writeback::WriteBehind;

/// Bytes a buffer holds: one direct write. Two are in use at most (one being filled, one
/// being written), and one write is in flight at a time, so the size sets the speed: on the
/// benchmark VM's disk (`dd oflag=direct`) 64 KiB writes reached 380 MB/s, 256 KiB 1.0 GB/s,
/// 512 KiB 1.4 GB/s, 1 MiB 1.5 GB/s. With 256 KiB an image listed with SHA-256 alone, whose
/// decryption outruns 1 GB/s, waited for the disk (100 MiB: 106–124 ms against 69–79 through
/// the page cache); with 512 KiB or 1 MiB it did not (65–105 ms), so 512 KiB is kept.
pub const BUFFER: usize = 512 * 1024;

/// Alignment of buffers, offsets and lengths for direct I/O.
pub const ALIGN: usize = 4096;

/// A buffer whose usable part starts at an [`ALIGN`]-aligned address (found in a slightly
/// larger allocation, so no `unsafe` allocation is needed; the heap block does not move when
/// the buffer goes to the writing thread and back).
struct Block {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Self {
        let bytes = vec![0u8; BUFFER + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN).min(ALIGN);
        Block {
            bytes,
            start,
            len: 0,
        }
    }

    fn room(&self) -> usize {
        BUFFER - self.len
    }

    /// Copies as much of `data` as fits; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        let at = self.start + self.len;
        if let (Some(dst), Some(src)) = (self.bytes.get_mut(at..at + n), data.get(..n)) {
            dst.copy_from_slice(src);
            self.len += n;
            n
        } else {
            0
        }
    }

    /// Zeros up to the next multiple of [`ALIGN`] (the last block of an image).
    fn pad(&mut self) {
        let padded = self.len.div_ceil(ALIGN) * ALIGN;
        if let Some(tail) = self
            .bytes
            .get_mut(self.start + self.len..self.start + padded)
        {
            tail.fill(0);
            self.len = padded;
        }
    }

    fn filled(&self) -> &[u8] {
        self.bytes
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }
}

/// The thread that writes full blocks while the caller fills the next one.
struct Writer {
    blocks: Option<mpsc::SyncSender<(Block, u64)>>,
    done: mpsc::Receiver<io::Result<Block>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(file: Arc<File>) -> io::Result<Self> {
        let (blocks, todo) = mpsc::sync_channel::<(Block, u64)>(1);
        let (give_back, done) = mpsc::sync_channel::<io::Result<Block>>(2);
        let thread = std::thread::Builder::new()
            .name("rampart-slot-write".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut direct = true;
                for (mut block, offset) in todo {
                    let mut result = file.write_all_at(block.filled(), offset);
                    if direct && result.as_ref().is_err_and(refused_direct) {
                        // The device wants another alignment: write buffered from here on.
                        direct = false;
                        result = clear_direct(&file)
                            .and_then(|()| file.write_all_at(block.filled(), offset));
                    }
                    block.len = 0;
                    let failed = result.is_err();
                    if give_back.send(result.map(|()| block)).is_err() || failed {
                        return;
                    }
                }
            })?;
        Ok(Writer {
            blocks: Some(blocks),
            done,
            thread: Some(thread),
        })
    }

    /// Waits for the block in flight (if any) and hands it back, or the write's error.
    fn returned(&self) -> io::Result<Block> {
        self.done.recv().map_err(|_| stopped())?
    }

    /// Queues a block; if the thread has stopped, the error of the write that stopped it.
    fn send(&self, block: Block, offset: u64) -> io::Result<()> {
        let sent = self
            .blocks
            .as_ref()
            .is_some_and(|tx| tx.send((block, offset)).is_ok());
        if sent {
            return Ok(());
        }
        while let Ok(result) = self.done.try_recv() {
            result?;
        }
        Err(stopped())
    }

    /// Lets the thread end once it wrote what it holds; the last results stay readable.
    fn close(&mut self) {
        drop(self.blocks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

fn stopped() -> io::Error {
    io::Error::other("the slot's writing thread stopped")
}

/// EINVAL from a direct write: an alignment the device does not take.
fn refused_direct(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

fn clear_direct(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::DIRECT)?;
    Ok(())
}

/// An image file (or partition) being written from its start with direct I/O.
pub struct DirectWriter {
    file: Arc<File>,
    /// A regular file is cut to the image's length at the end; a device is not.
    regular: bool,
    current: Block,
    /// Buffers made so far (at most two).
    blocks: usize,
    /// Blocks sent to the thread whose result was not read yet.
    in_flight: usize,
    /// Bytes sent to the thread (a multiple of [`BUFFER`] until the end).
    sent: u64,
    writer: Writer,
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWriter")
            .field("regular", &self.regular)
            .field("sent", &self.sent)
            .field("buffered", &self.current.len)
            .finish_non_exhaustive()
    }
}

impl DirectWriter {
    /// Starts writing `file`, opened with `O_DIRECT`, at offset 0.
    fn start(file: File, regular: bool) -> io::Result<Self> {
        let file = Arc::new(file);
        Ok(DirectWriter {
            writer: Writer::start(Arc::clone(&file))?,
            file,
            regular,
            current: Block::new(),
            blocks: 1,
            in_flight: 0,
            sent: 0,
        })
    }

    /// Appends all of `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.current.fill(data);
            if n == 0 {
                // Cannot happen (a full block is sent below); never loop on it.
                return Err(io::Error::other("the slot's buffer took no bytes"));
            }
            data = data.get(n..).unwrap_or_default();
            if self.current.room() == 0 {
                self.send_current()?;
            }
        }
        Ok(())
    }

    /// Hands the full current block to the thread and takes the other one to fill.
    fn send_current(&mut self) -> io::Result<()> {
        let next = if self.blocks < 2 {
            self.blocks += 1;
            Block::new()
        } else {
            // Both made: wait for the one being written.
            self.in_flight -= 1;
            self.writer.returned()?
        };
        let full = std::mem::replace(&mut self.current, next);
        let len = full.len as u64;
        self.writer.send(full, self.sent)?;
        self.sent += len;
        self.in_flight += 1;
        Ok(())
    }

    /// Writes the rest (its last block padded), waits for every write, cuts a regular file
    /// to the length written, and flushes everything to stable storage (`fsync`).
    pub fn sync_all(self) -> io::Result<File> {
        let DirectWriter {
            file,
            regular,
            mut current,
            mut in_flight,
            sent,
            mut writer,
            ..
        } = self;
        let length = sent + current.len as u64;
        if current.len > 0 {
            current.pad();
            writer.send(current, sent)?;
            in_flight += 1;
        }
        writer.close();
        for _ in 0..in_flight {
            writer.returned()?;
        }
        drop(writer);
        if regular {
            file.set_len(length)?;
        }
        file.sync_all()?;
        Arc::try_unwrap(file).map_err(|_| stopped())
    }
}

/// Whether files in `dir` can be opened for direct I/O: what [`SlotFile::create`] will do
/// with a slot there. (A probe file is created and removed.)
pub fn available_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".rampart-direct-probe-{}", std::process::id()));
    let opened = open_slot(&probe, false, true);
    let _ = std::fs::remove_file(&probe);
    opened.is_ok()
}

/// Opens `path` for writing from its start: a regular file created or truncated, a block
/// device (a partition) in place; with `O_DIRECT` if `direct`.
fn open_slot(path: &Path, block_device: bool, direct: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .create(!block_device)
        .truncate(!block_device);
    if direct {
        options.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
    options.open(path)
}

/// An image being written into a slot: direct I/O where the file system takes it, else
/// buffered with write-behind.
#[derive(Debug)]
pub enum SlotFile {
    /// `O_DIRECT`, through aligned buffers.
    Direct(DirectWriter),
    /// Through the page cache (the file system refused `O_DIRECT`).
    Buffered(WriteBehind),
}

impl SlotFile {
    /// Opens `path` for writing from its start: a regular file is created or truncated,
    /// a block device (a partition) is written in place.
    pub fn create(path: &Path, block_device: bool) -> io::Result<Self> {
        match open_slot(path, block_device, true) {
            Ok(file) => Ok(SlotFile::Direct(DirectWriter::start(file, !block_device)?)),
            Err(e) if refused_direct(&e) => {
                tracing::debug!(path = %path.display(), "O_DIRECT refused here; writing through the page cache");
                Ok(SlotFile::Buffered(WriteBehind::new(
                    open_slot(path, block_device, false)?,
                    0,
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Appends all of `data`.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            SlotFile::Direct(w) => w.write_all(data),
            SlotFile::Buffered(w) => w.write_all(data),
        }
    }

    /// Writes what is left and flushes everything to stable storage.
    pub fn sync_all(self) -> io::Result<File> {
        match self {
            SlotFile::Direct(w) => w.sync_all(),
            SlotFile::Buffered(w) => w.sync_all(),
        }
    }

    /// Whether the image goes past the page cache.
    pub fn is_direct(&self) -> bool {
        matches!(self, SlotFile::Direct(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn writes_exactly_the_image_whatever_its_length_and_pieces() {
        let dir = tempfile::tempdir().unwrap();
        for (len, piece) in [
            (0, 1),
            (1, 1),
            (ALIGN - 1, 100),
            (ALIGN, ALIGN),
            (BUFFER, 65_536),
            (BUFFER + 1, 65_536 + 3),
            (3 * BUFFER + 4321, 200_000),
            (5 * BUFFER, 5 * BUFFER),
        ] {
            let path = dir.path().join(format!("slot-{len}-{piece}"));
            let data = image(len);
            let mut w = SlotFile::create(&path, false).unwrap();
            for chunk in data.chunks(piece) {
                w.write_all(chunk).unwrap();
            }
            w.sync_all().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn a_slot_written_again_holds_only_the_new_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let mut w = SlotFile::create(&path, false).unwrap();
        w.write_all(&image(3 * BUFFER)).unwrap();
        w.sync_all().unwrap();
        let mut w = SlotFile::create(&path, false).unwrap();
        w.write_all(b"short").unwrap();
        w.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }

    #[test]
    fn a_device_keeps_its_length_and_the_bytes_after_the_image() {
        // What a partition sees: written in place from offset 0, never truncated; the
        // last block is padded with zeros, what lies beyond it is left alone.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partition");
        std::fs::write(&path, vec![0xAA; 4 * ALIGN]).unwrap();
        let data = image(ALIGN + 10);
        let mut w = SlotFile::create(&path, true).unwrap();
        w.write_all(&data).unwrap();
        w.sync_all().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 4 * ALIGN);
        assert_eq!(back.get(..data.len()), Some(&data[..]));
        assert!(back
            .get(data.len()..2 * ALIGN)
            .unwrap()
            .iter()
            .all(|b| *b == 0));
        assert!(back.get(2 * ALIGN..).unwrap().iter().all(|b| *b == 0xAA));
    }

    #[test]
    fn direct_io_is_used_where_the_file_system_takes_it() {
        // ext4, xfs and btrfs take O_DIRECT; a test machine whose temporary folder does not
        // (tmpfs before Linux 6.6) still passes the tests above on the buffered path.
        let dir = tempfile::tempdir().unwrap();
        let w = SlotFile::create(&dir.path().join("slot"), false).unwrap();
        assert_eq!(w.is_direct(), available_in(dir.path()));
        w.sync_all().unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the probe leaves nothing behind"
        );
    }

    #[test]
    fn bytes_reach_the_file_a_buffer_at_a_time() {
        // What a power cut sees: with direct I/O the file grows by whole buffers (the rest is
        // in the ECU's memory, lost with it), through the page cache by every write.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let mut w = SlotFile::create(&path, false).unwrap();
        w.write_all(&image(BUFFER + 100)).unwrap();
        // The first buffer went to the writing thread; wait for it to land.
        let direct = w.is_direct();
        let expected = if direct {
            BUFFER as u64
        } else {
            BUFFER as u64 + 100
        };
        let start = std::time::Instant::now();
        while std::fs::metadata(&path).unwrap().len() != expected {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // And no further: the last 100 bytes wait in memory for more, or for the end.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), expected);
        w.sync_all().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), BUFFER as u64 + 100);
    }
}
