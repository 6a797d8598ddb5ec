//! NEON + dotprod kernels.
