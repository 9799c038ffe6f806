//! A pinned ring buffer is adopted by every new daemon, positions and all.
//! Its consumer position lives in a page that user space writes; if it was
//! ever corrupted (seen: two daemons of a build without the pin-directory
//! lock consumed one ring at once and left the consumer position beyond the
//! producer's), the kernel takes the ring for full and drops every record,
//! while epoll reports it readable forever and the reader spins. Each new
//! daemon therefore checks the positions before reading and, when they are
//! impossible, moves the consumer to the producer: the unread bytes are
//! lost (and reported), the ring works again.

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU64, Ordering},
};

/// What [`check_and_repair`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub consumer: u64,
    pub producer: u64,
}

/// The consumer position to write when `consumer` cannot belong to a ring
/// of `size` data bytes whose producer is at `producer`, or `None` when it
/// can. Records are 8-byte aligned, and the consumer is never ahead of the
/// producer nor more than one ring size behind it.
pub fn repaired_consumer(consumer: u64, producer: u64, size: u64) -> Option<u64> {
    let valid = consumer <= producer && producer - consumer <= size && consumer.is_multiple_of(8);
    (!valid).then_some(producer)
}

/// Maps one page of the ring's control area.
struct Page {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Page {
    fn map(fd: BorrowedFd<'_>, index: usize, write: bool) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map fd; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                (index * len) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn pos(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped, page-aligned and at least 8 bytes; the
        // kernel's position is a naturally aligned u64 at its start.
        unsafe { &*(self.ptr as *const AtomicU64) }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Checks the ring buffer behind `fd` (with `size` data bytes) and repairs
/// an impossible consumer position. Returns the positions found and, when
/// a repair was made, the consumer position written.
pub fn check_and_repair(
    fd: BorrowedFd<'_>,
    size: u64,
) -> std::io::Result<(Positions, Option<u64>)> {
    let consumer_page = Page::map(fd, 0, true)?;
    let producer_page = Page::map(fd, 1, false)?;
    let found = Positions {
        consumer: consumer_page.pos().load(Ordering::Acquire),
        producer: producer_page.pos().load(Ordering::Acquire),
    };
    match repaired_consumer(found.consumer, found.producer, size) {
        None => Ok((found, None)),
        Some(new) => {
            consumer_page.pos().store(new, Ordering::Release);
            Ok((found, Some(new)))
        }
    }
}

/// Writes the consumer position of the ring buffer behind `fd`. Only for
/// tests that reproduce a corrupted ring; a reader advances it through aya.
pub fn write_consumer(fd: BorrowedFd<'_>, pos: u64) -> std::io::Result<()> {
    Page::map(fd, 0, true)?.pos().store(pos, Ordering::Release);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::repaired_consumer;

    const SIZE: u64 = 16 << 20;

    #[test]
    fn consistent_positions_are_left_alone() {
        assert_eq!(repaired_consumer(0, 0, SIZE), None);
        assert_eq!(repaired_consumer(4096, 8192, SIZE), None);
        // A full ring: exactly one ring size unread.
        assert_eq!(repaired_consumer(8, 8 + SIZE, SIZE), None);
    }

    #[test]
    fn impossible_positions_move_the_consumer_to_the_producer() {
        // The corruption that was seen: consumer far beyond the producer.
        assert_eq!(
            repaired_consumer(2_630_110_728_324_928, 3_834_340_704, SIZE),
            Some(3_834_340_704)
        );
        // More than one ring size behind.
        assert_eq!(repaired_consumer(0, SIZE + 8, SIZE), Some(SIZE + 8));
        // Not on a record boundary.
        assert_eq!(repaired_consumer(12, 64, SIZE), Some(64));
    }
}
