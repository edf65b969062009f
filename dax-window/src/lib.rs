//! The DAX window.
