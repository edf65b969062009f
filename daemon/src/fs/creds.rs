//! Per-thread filesystem credentials.
//!
//! setfsuid/setfsgid act on the calling thread only (the raw syscalls; glibc would not
//! broadcast these), so a worker can create files as the client while other workers run as
//! root. Supplementary groups are not switched (as virtiofsd): the client kernel has already
//! checked permissions with default_permissions; the host re-check with the caller's fsuid
//! and fsgid can refuse an access that only a supplementary group grants.

use std::io;

use super::sys;

/// While alive, this thread's fsuid/fsgid are the caller's; dropping restores root.
#[derive(Debug)]
pub struct Credentials {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Credentials {
    pub fn switch(uid: u32, gid: u32) -> io::Result<Self> {
        // The group first: after the uid changes we may lack CAP_SETGID.
        sys::setfsgid(gid);
        sys::setfsuid(uid);
        // setfsuid never reports failure; read the values back to be sure.
        let cur_uid = sys::setfsuid(u32::MAX);
        let cur_gid = sys::setfsgid(u32::MAX);
        let guard = Credentials {
            _not_send: std::marker::PhantomData,
        };
        if cur_uid != uid || cur_gid != gid {
            drop(guard);
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(guard)
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        sys::setfsuid(0);
        sys::setfsgid(0);
    }
}
