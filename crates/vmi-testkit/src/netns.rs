//! Network namespaces for tests: [`vmi_cluster`]'s, re-exported (a test panics where the product returns errors).

pub use vmi_cluster::{Net, Node};
