//! Policy compiler: NetworkPolicy semantics, pure (no I/O).
