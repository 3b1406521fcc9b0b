//! The rooms every delivery goes through (`CONTRACT.md` section 3).
//!
//! Rooms, not loops over sockets, so that a cross-node adapter can carry every broadcast.

/// Every authenticated socket. An unauthenticated socket is in no room but its own.
pub const AUTHENTICATED: &str = "authenticated";
/// Sockets of `root` and `admin` users.
pub const ADMINS: &str = "admins";

/// The room of one user's sockets.
pub fn user(user_id: &str) -> String {
    format!("user:{user_id}")
}
