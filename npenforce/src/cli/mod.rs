//! Command-line front ends of the library (argument types and `run` functions).

pub mod check;
pub mod demo;
pub mod matrix;
pub mod uninstall;
