//! A userfaultfd opened for write-protect tracking. rustix opens it; the ioctls and the
//! message layout are the kernel's uapi, which no crate carries (see `sys`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::mm::{userfaultfd, UserfaultfdFlags};

use crate::sys;

pub struct Uffd {
    fd: OwnedFd,
    kernel_faults: bool,
}

fn open_raw(flags: UserfaultfdFlags) -> io::Result<OwnedFd> {
    // SAFETY: the call itself is safe (rustix marks it unsafe for what the descriptor can
    // do); what this module registers with it is only ever the window's own memory.
    Ok(unsafe { userfaultfd(flags) }?)
}

impl Uffd {
    /// Opens a userfaultfd that also sees faults the kernel takes for the process
    /// (O_DIRECT, process_vm_writev) when the caller may (root, CAP_SYS_PTRACE or
    /// vm.unprivileged_userfaultfd=1), else one limited to user-mode faults.
    pub fn open() -> io::Result<Uffd> {
        let base = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
        let (fd, kernel_faults) = match open_raw(base) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let user_mode_only = UserfaultfdFlags::from_bits_retain(sys::UFFD_USER_MODE_ONLY);
                (open_raw(base | user_mode_only)?, false)
            }
            Err(e) => return Err(e),
        };
        let uffd = Uffd { fd, kernel_faults };
        let wanted = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP
            | sys::UFFD_FEATURE_WP_UNPOPULATED
            | sys::UFFD_FEATURE_POISON;
        let mut api = sys::UffdioApi {
            api: sys::UFFD_API,
            features: wanted,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a uffdio_api, which `api` is.
        unsafe { sys::ioctl(uffd.fd.as_fd(), sys::UFFDIO_API, &mut api)? };
        if api.features & wanted != wanted {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "userfaultfd lacks features {:#x} (WP, WP_UNPOPULATED, POISON)",
                    wanted & !api.features
                ),
            ));
        }
        Ok(uffd)
    }

    /// Whether kernel-mode faults (GUP on behalf of the process) reach this descriptor.
    pub fn kernel_faults(&self) -> bool {
        self.kernel_faults
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn register_wp(&self, addr: usize, len: usize) -> io::Result<()> {
        let mut reg = sys::UffdioRegister {
            range: sys::UffdioRange {
                start: addr as u64,
                len: len as u64,
            },
            mode: sys::UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a uffdio_register, which `reg` is.
        unsafe { sys::ioctl(self.fd(), sys::UFFDIO_REGISTER, &mut reg)? };
        Ok(())
    }

    pub fn writeprotect(&self, addr: usize, len: usize) -> io::Result<()> {
        let mut wp = sys::UffdioWriteprotect {
            range: sys::UffdioRange {
                start: addr as u64,
                len: len as u64,
            },
            mode: sys::UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a uffdio_writeprotect, which `wp` is.
        unsafe { sys::ioctl(self.fd(), sys::UFFDIO_WRITEPROTECT, &mut wp)? };
        Ok(())
    }

    pub fn wake(&self, addr: usize, len: usize) -> io::Result<()> {
        let mut range = sys::UffdioRange {
            start: addr as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE takes a uffdio_range, which `range` is.
        unsafe { sys::ioctl(self.fd(), sys::UFFDIO_WAKE, &mut range)? };
        Ok(())
    }

    /// Installs poison markers on empty PTEs: any later access gets SIGBUS (user mode) or
    /// EFAULT (kernel mode). Does not wake: the caller wakes once the page is ready.
    pub fn poison(&self, addr: usize, len: usize) -> io::Result<()> {
        let mut p = sys::UffdioPoison {
            range: sys::UffdioRange {
                start: addr as u64,
                len: len as u64,
            },
            mode: sys::UFFDIO_POISON_MODE_DONTWAKE,
            updated: 0,
        };
        // SAFETY: UFFDIO_POISON takes a uffdio_poison, which `p` is.
        unsafe { sys::ioctl(self.fd(), sys::UFFDIO_POISON, &mut p)? };
        Ok(())
    }

    /// Reads pending messages without blocking; returns how many were read.
    pub fn read_msgs(&self, buf: &mut [sys::UffdMsg]) -> io::Result<usize> {
        let bytes = std::mem::size_of_val(buf);
        // SAFETY: `buf` is a writable array of `bytes` bytes of plain-old-data messages.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                bytes,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize / std::mem::size_of::<sys::UffdMsg>())
    }
}
