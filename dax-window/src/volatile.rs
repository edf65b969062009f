//! Volatile copies between window memory and ordinary Rust buffers.
//!
//! Window memory is shared with other mappings of the same files (other processes, a
//! guest, other threads of this one) that change it at any time. Plain loads and stores
//! (`copy_nonoverlapping`, slice copies) on such memory are a data race in Rust's model and
//! let the compiler assume the bytes are stable (re-read, split or widen accesses). The
//! window is not a Rust allocation: it is an `mmap`, and Rust's rule for memory outside any
//! Rust allocation is that it is accessed with volatile operations, each an externally
//! observable access of exactly its size, never elided, duplicated or merged. That is what
//! the `vm-memory` crate does for guest memory, and what these functions do:
//!
//! - on the shared side, the bulk is copied as aligned `u64` volatile accesses, and only the
//!   unaligned head and tail (fewer than 8 bytes each) byte by byte;
//! - the caller's buffer is a private Rust slice with no alignment promise: it is accessed
//!   with ordinary unaligned loads and stores.
//!
//! An aligned 8-byte volatile access is one instruction on x86_64 (and on every 64-bit
//! target Linux runs on), so a concurrent writer's aligned words are seen whole or not at
//! all; bytes of different words may come from different moments (no snapshot), as with
//! any copy of memory that changes under it.

const WORD: usize = std::mem::size_of::<u64>();

/// Bytes from `addr` to the next multiple of 8, at most `len`.
fn head_len(addr: usize, len: usize) -> usize {
    (addr.wrapping_neg() % WORD).min(len)
}

/// Copies `dst.len()` bytes from shared memory at `src` into `dst`.
///
/// # Safety
/// `[src, src + dst.len())` must be mapped readable memory that no Rust reference points
/// into, for the whole call. It may be changed concurrently by anyone (that is the point),
/// and it must not overlap `dst`. A fault while reading it (SIGBUS for a file page past EOF,
/// say) is delivered as a signal at the faulting access.
pub(crate) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let d = dst.as_mut_ptr();
    let head = head_len(src as usize, len);
    let words = (len - head) / WORD;
    let body_end = head + words * WORD;
    for i in 0..head {
        // SAFETY: `i < len`: inside both ranges (caller's contract for `src`, slice bounds
        // for `d`); a byte access needs no alignment.
        unsafe { d.add(i).write(src.add(i).read_volatile()) };
    }
    let s = src.wrapping_add(head) as *const u64;
    let d_body = d.wrapping_add(head);
    let mut k = 0;
    while k + 4 <= words {
        // SAFETY: `src + head` is 8-aligned (that is what `head` is), so `s.add(k..k+4)`
        // are aligned words inside the source range (`head + words*8 <= len`); the
        // destination words are inside `dst`, written unaligned. Four loads are issued
        // before the stores so the loop does not serialise on one register.
        unsafe {
            let a = s.add(k).read_volatile();
            let b = s.add(k + 1).read_volatile();
            let c = s.add(k + 2).read_volatile();
            let e = s.add(k + 3).read_volatile();
            let o = d_body.add(k * WORD) as *mut u64;
            o.write_unaligned(a);
            o.add(1).write_unaligned(b);
            o.add(2).write_unaligned(c);
            o.add(3).write_unaligned(e);
        }
        k += 4;
    }
    while k < words {
        // SAFETY: as above, one word.
        unsafe {
            let v = s.add(k).read_volatile();
            (d_body.add(k * WORD) as *mut u64).write_unaligned(v);
        }
        k += 1;
    }
    for i in body_end..len {
        // SAFETY: `i < len`, as for the head.
        unsafe { d.add(i).write(src.add(i).read_volatile()) };
    }
}

/// Copies `src` into shared memory at `dst`.
///
/// # Safety
/// `[dst, dst + src.len())` must be mapped memory that no Rust reference points into, for
/// the whole call. It may be read or written concurrently by anyone, and it must not
/// overlap `src`. A fault while writing it (SIGSEGV on a read-only page, SIGBUS when the
/// file cannot back the page) is delivered as a signal at the faulting access.
pub(crate) unsafe fn copy_to_shared(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    let s = src.as_ptr();
    let head = head_len(dst as usize, len);
    let words = (len - head) / WORD;
    let body_end = head + words * WORD;
    for i in 0..head {
        // SAFETY: `i < len`: inside both ranges; byte accesses need no alignment.
        unsafe { dst.add(i).write_volatile(s.add(i).read()) };
    }
    let d = dst.wrapping_add(head) as *mut u64;
    let s_body = s.wrapping_add(head);
    let mut k = 0;
    while k + 4 <= words {
        // SAFETY: `dst + head` is 8-aligned, so `d.add(k..k+4)` are aligned words inside
        // the destination range; the source words are inside `src`, read unaligned.
        unsafe {
            let i = s_body.add(k * WORD) as *const u64;
            let a = i.read_unaligned();
            let b = i.add(1).read_unaligned();
            let c = i.add(2).read_unaligned();
            let e = i.add(3).read_unaligned();
            d.add(k).write_volatile(a);
            d.add(k + 1).write_volatile(b);
            d.add(k + 2).write_volatile(c);
            d.add(k + 3).write_volatile(e);
        }
        k += 4;
    }
    while k < words {
        // SAFETY: as above, one word.
        unsafe {
            let v = (s_body.add(k * WORD) as *const u64).read_unaligned();
            d.add(k).write_volatile(v);
        }
        k += 1;
    }
    for i in body_end..len {
        // SAFETY: `i < len`, as for the head.
        unsafe { dst.add(i).write_volatile(s.add(i).read()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes, distinct at every position of a 4 KiB buffer mod 251.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(37))
            .collect()
    }

    /// Every alignment of the shared side, of the private side, and every length around the
    /// word and unroll boundaries, both directions, against a plain copy (on heap memory;
    /// tests/volatile.rs does the same on window memory).
    #[test]
    fn copies_every_alignment_and_length() {
        let lens: Vec<usize> = (0..=80).chain([127, 128, 129, 1000, 4095, 4096]).collect();
        let shared = pattern(4096 + 64, 1);
        for &len in &lens {
            for so in 0..WORD {
                for po in 0..WORD {
                    // From shared (offset `so`) into private (offset `po`).
                    let mut private = vec![0xEEu8; len + 2 * WORD];
                    // SAFETY: `shared[so..so+len]` is in bounds and distinct from `private`.
                    unsafe {
                        copy_from_shared(shared.as_ptr().add(so), &mut private[po..po + len])
                    };
                    assert_eq!(
                        &private[po..po + len],
                        &shared[so..so + len],
                        "{len} {so} {po}"
                    );
                    assert!(private[..po].iter().all(|&b| b == 0xEE), "underrun");
                    assert!(private[po + len..].iter().all(|&b| b == 0xEE), "overrun");

                    // From private (offset `po`) into shared (offset `so`).
                    let src = pattern(len + WORD, 7);
                    let mut dst = vec![0xEEu8; len + 2 * WORD];
                    // SAFETY: `dst[so..so+len]` is in bounds and distinct from `src`.
                    unsafe { copy_to_shared(dst.as_mut_ptr().add(so), &src[po..po + len]) };
                    assert_eq!(&dst[so..so + len], &src[po..po + len], "{len} {so} {po}");
                    assert!(dst[..so].iter().all(|&b| b == 0xEE), "underrun");
                    assert!(dst[so + len..].iter().all(|&b| b == 0xEE), "overrun");
                }
            }
        }
    }

    #[test]
    fn head_is_bytes_to_the_next_word() {
        assert_eq!(head_len(0x1000, 100), 0);
        assert_eq!(head_len(0x1001, 100), 7);
        assert_eq!(head_len(0x1007, 100), 1);
        assert_eq!(head_len(0x1003, 2), 2);
    }
}
