//! FUSE wire format.
