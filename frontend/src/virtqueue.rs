//! The driver's half of a split virtqueue (virtio 1.x, section 2.7), laid out in guest RAM:
//! descriptor table, available ring (driver writes) and used ring (device writes).
//!
//! The device is not trusted: every used-ring entry is checked against the chains this side
//! published, and an index that jumps further than the queue holds is an error, not a loop.

use std::collections::HashMap;
use std::fmt;
use std::io;

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::{GuestRam, MemoryError};

/// Descriptor flag: `next` is valid.
pub const DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag: device-writable buffer.
pub const DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is a table of descriptors (VIRTIO_RING_F_INDIRECT_DESC).
pub const DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Errors of one virtqueue.
#[derive(Debug)]
pub enum QueueError {
    /// The queue size is not a power of two in 1..=32768.
    BadSize(u16),
    /// Not enough free descriptors for the chain.
    NoDescriptors {
        /// Descriptors wanted.
        need: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A chain needs at least one descriptor.
    EmptyChain,
    /// Guest RAM refused an access.
    Memory(MemoryError),
    /// The device moved `used.idx` further than there are descriptors.
    UsedIndexJump {
        /// Our last seen used index.
        last: u16,
        /// The device's used index.
        device: u16,
    },
    /// The device returned a chain head that is not in flight.
    UnknownUsedId(u32),
    /// Kick or call eventfd I/O failed.
    EventFd(io::Error),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::BadSize(s) => write!(f, "queue size {s} is not a power of two <= 32768"),
            QueueError::NoDescriptors { need, free } => {
                write!(f, "chain needs {need} descriptors, {free} free")
            }
            QueueError::EmptyChain => write!(f, "empty descriptor chain"),
            QueueError::Memory(e) => write!(f, "{e}"),
            QueueError::UsedIndexJump { last, device } => write!(
                f,
                "device moved used.idx from {last} to {device}, more than the queue holds"
            ),
            QueueError::UnknownUsedId(id) => {
                write!(f, "device returned descriptor {id}, which is not in flight")
            }
            QueueError::EventFd(e) => write!(f, "eventfd: {e}"),
        }
    }
}

impl std::error::Error for QueueError {}

impl From<MemoryError> for QueueError {
    fn from(e: MemoryError) -> Self {
        QueueError::Memory(e)
    }
}

/// A descriptor exactly as written to the table, for hand-made (malformed) chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Guest-physical address, any value.
    pub addr: u64,
    /// Length, any value.
    pub len: u32,
    /// Flags, any value (NEXT, WRITE, INDIRECT or junk).
    pub flags: u16,
    /// Next index, any value.
    pub next: u16,
}

impl RawDescriptor {
    /// The 16 bytes of `struct virtq_desc`, little-endian.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// A used-ring entry the device returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head of the chain (as published in the available ring).
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// Guest-physical layout of one split queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Descriptor table (16-byte entries).
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// First byte after the queue.
    pub end: u64,
}

impl QueueLayout {
    /// Lays out a queue of `size` entries at `base` (page aligned).
    pub fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        // flags, idx, ring[n], used_event
        let avail_end = avail + 4 + 2 * n + 2;
        let used = avail_end.next_multiple_of(64);
        // flags, idx, ring[n] of {id, len}, avail_event
        let used_end = used + 4 + 8 * n + 2;
        Self {
            desc,
            avail,
            used,
            end: used_end.next_multiple_of(4096),
        }
    }
}

/// The driver side of one split virtqueue, with its kick, call and error eventfds.
#[derive(Debug)]
pub struct SplitQueue {
    index: u16,
    size: u16,
    layout: QueueLayout,
    free: Vec<u16>,
    /// Published head (as the device will return it) -> descriptors it owns.
    in_flight: HashMap<u16, Vec<u16>>,
    next_avail: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
    err: EventFd,
}

impl SplitQueue {
    /// Creates queue `index` of `size` entries at `base` in `ram` and zeroes its rings.
    pub fn new(ram: &GuestRam, index: u16, size: u16, base: u64) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(QueueError::BadSize(size));
        }
        let layout = QueueLayout::new(base, size);
        ram.fill(base, (layout.end - base) as usize, 0)?;
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(QueueError::EventFd);
        Ok(Self {
            index,
            size,
            layout,
            free: (0..size).rev().collect(),
            in_flight: HashMap::new(),
            next_avail: 0,
            last_used: 0,
            kick: eventfd()?,
            call: eventfd()?,
            err: eventfd()?,
        })
    }

    /// The queue's index on the device (0 = hiprio, 1.. = request queues).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the rings are.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains published and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The eventfd the driver writes to notify the device.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the device writes when it used buffers.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// The eventfd the device writes on a queue error.
    pub fn err_fd(&self) -> &EventFd {
        &self.err
    }

    /// Writes descriptor `index` of the table verbatim (any index below the queue size).
    pub fn write_descriptor(
        &self,
        ram: &GuestRam,
        index: u16,
        d: RawDescriptor,
    ) -> Result<(), QueueError> {
        let at = self.layout.desc + 16 * u64::from(index % self.size);
        ram.write(at, &d.to_bytes())?;
        Ok(())
    }

    /// The last used index this side has consumed.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// VIRTIO_RING_F_EVENT_IDX: asks the device to notify once `used.idx` passes `idx`
    /// (the `used_event` field after the available ring).
    pub fn set_used_event(&self, ram: &GuestRam, idx: u16) -> Result<(), QueueError> {
        ram.store::<u16>(self.layout.avail + 4 + 2 * u64::from(self.size), idx)?;
        Ok(())
    }

    /// Takes `n` free descriptors off the free list, for a hand-made chain.
    pub fn reserve(&mut self, n: usize) -> Result<Vec<u16>, QueueError> {
        if n == 0 {
            return Err(QueueError::EmptyChain);
        }
        if n > self.free.len() {
            return Err(QueueError::NoDescriptors {
                need: n,
                free: self.free.len(),
            });
        }
        let at = self.free.len() - n;
        Ok(self.free.split_off(at))
    }

    /// Records that `head` (any value, even out of range) owns the reserved `ids`, so that
    /// they are freed when the device returns `head`.
    pub fn adopt(&mut self, head: u16, ids: Vec<u16>) {
        self.in_flight.entry(head).or_default().extend(ids);
    }

    /// Gives reserved descriptors that were never published back to the free list.
    pub fn release(&mut self, ids: Vec<u16>) {
        self.free.extend(ids);
    }

    /// Whether a chain published under `head` is still with the device.
    pub fn is_in_flight(&self, head: u16) -> bool {
        self.in_flight.contains_key(&head)
    }

    /// Puts `head` in the next available-ring slot and publishes it (release order).
    pub fn publish(&mut self, ram: &GuestRam, head: u16) -> Result<(), QueueError> {
        let slot = u64::from(self.next_avail % self.size);
        ram.write(self.layout.avail + 4 + 2 * slot, &head.to_le_bytes())?;
        self.next_avail = self.next_avail.wrapping_add(1);
        ram.store::<u16>(self.layout.avail + 2, self.next_avail)?;
        Ok(())
    }

    /// Notifies the device (writes the kick eventfd).
    pub fn notify(&self) -> Result<(), QueueError> {
        self.kick.write(1).map_err(QueueError::EventFd)
    }

    /// Clears a pending call notification; true if there was one.
    pub fn ack_call(&self) -> bool {
        self.call.read().is_ok()
    }

    /// Clears a pending error notification; true if there was one.
    pub fn ack_err(&self) -> bool {
        self.err.read().is_ok()
    }

    /// Takes the next used-ring entry, if the device returned one, and frees its chain.
    pub fn pop_used(&mut self, ram: &GuestRam) -> Result<Option<UsedElem>, QueueError> {
        let device: u16 = ram.load(self.layout.used + 2)?;
        if device == self.last_used {
            return Ok(None);
        }
        if device.wrapping_sub(self.last_used) > self.size {
            return Err(QueueError::UsedIndexJump {
                last: self.last_used,
                device,
            });
        }
        let slot = u64::from(self.last_used % self.size);
        let mut b = [0u8; 8];
        ram.read(self.layout.used + 4 + 8 * slot, &mut b)?;
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let owned = u16::try_from(id)
            .ok()
            .and_then(|h| self.in_flight.remove(&h));
        match owned {
            Some(ids) => {
                self.free.extend(ids);
                Ok(Some(UsedElem { id, len }))
            }
            None => Err(QueueError::UnknownUsedId(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RAM_BASE;

    #[test]
    fn layout_is_aligned_and_disjoint() {
        let l = QueueLayout::new(RAM_BASE, 128);
        assert_eq!(l.desc, RAM_BASE);
        assert_eq!(l.avail, RAM_BASE + 2048);
        assert!(l.used >= l.avail + 4 + 256 + 2);
        assert_eq!(l.used % 64, 0);
        assert!(l.end >= l.used + 4 + 1024 + 2);
        assert_eq!(l.end % 4096, 0);
    }

    /// Plays the device by hand: returns the chain through the used ring.
    fn device_returns(ram: &GuestRam, q: &SplitQueue, id: u32, len: u32, idx: u16) {
        let slot = u64::from((idx - 1) % q.size());
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&id.to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        ram.write(q.layout().used + 4 + 8 * slot, &e).unwrap();
        ram.store::<u16>(q.layout().used + 2, idx).unwrap();
    }

    #[test]
    fn chains_are_linked_published_and_reclaimed() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&ram, 1, 8, RAM_BASE).unwrap();
        let ids = q.reserve(2).unwrap();
        assert_eq!(q.free_descriptors(), 6);
        let head = ids[0];
        let first = RawDescriptor {
            addr: RAM_BASE + 0x8000,
            len: 40,
            flags: DESC_F_NEXT,
            next: ids[1],
        };
        let second = RawDescriptor {
            addr: RAM_BASE + 0x9000,
            len: 16,
            flags: DESC_F_WRITE,
            next: 0,
        };
        q.write_descriptor(&ram, ids[0], first).unwrap();
        q.write_descriptor(&ram, ids[1], second).unwrap();
        q.adopt(head, ids);
        assert!(q.is_in_flight(head));
        q.publish(&ram, head).unwrap();
        let avail_idx: u16 = ram.load(q.layout().avail + 2).unwrap();
        assert_eq!(avail_idx, 1);
        let mut d = [0u8; 16];
        ram.read(q.layout().desc + 16 * u64::from(head), &mut d)
            .unwrap();
        assert_eq!(
            u64::from_le_bytes(d[0..8].try_into().unwrap()),
            RAM_BASE + 0x8000
        );
        assert_eq!(u16::from_le_bytes([d[12], d[13]]), DESC_F_NEXT);
        let next = u16::from_le_bytes([d[14], d[15]]);
        ram.read(q.layout().desc + 16 * u64::from(next), &mut d)
            .unwrap();
        assert_eq!(u16::from_le_bytes([d[12], d[13]]), DESC_F_WRITE);

        assert_eq!(q.pop_used(&ram).unwrap(), None);
        device_returns(&ram, &q, u32::from(head), 16, 1);
        assert_eq!(
            q.pop_used(&ram).unwrap(),
            Some(UsedElem {
                id: u32::from(head),
                len: 16
            })
        );
        assert_eq!(q.free_descriptors(), 8);
        assert_eq!(q.in_flight(), 0);

        // A device returning a head that is not in flight, or jumping its index, is caught.
        device_returns(&ram, &q, 5, 0, 2);
        assert!(matches!(
            q.pop_used(&ram),
            Err(QueueError::UnknownUsedId(5))
        ));
        ram.store::<u16>(q.layout().used + 2, 200).unwrap();
        assert!(matches!(
            q.pop_used(&ram),
            Err(QueueError::UsedIndexJump { .. })
        ));
    }

    #[test]
    fn reservation_is_bounded() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&ram, 1, 4, RAM_BASE).unwrap();
        assert!(matches!(q.reserve(0), Err(QueueError::EmptyChain)));
        let ids = q.reserve(3).unwrap();
        assert!(matches!(
            q.reserve(2),
            Err(QueueError::NoDescriptors { need: 2, free: 1 })
        ));
        q.adopt(999, ids);
        assert_eq!(q.in_flight(), 1);
        assert!(SplitQueue::new(&ram, 1, 3, RAM_BASE).is_err());
    }
}
