//! The command line's pieces that are not in `main.rs`:
//!
//! - `db`: opening `--db` (a SQLite file or a `postgres://` URL, with
//!   its password) and `migrate`;
//! - `tokens`: `token create|list|revoke`.

pub mod db;
pub mod tokens;
