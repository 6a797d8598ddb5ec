//! Compute kernels for microllm.
