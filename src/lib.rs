//! abs-socket: a Socket.IO server for audiobookshelf clients.
//!
//! A map of the crate, by job:
//! - [`socket`]: where each socket event is handled; [`rooms`]: the rooms deliveries go through;
//!   [`presence`]: who is online; [`cluster`]: several nodes as one, over Redis.
//! - [`revocation`]: cutting off sockets whose credential was revoked; [`registry`]: the
//!   authenticated sockets it checks.
//! - [`auth`]: where a token is checked; [`store`]: every query; [`writer`]: background writes.
//! - [`db`]: opening the database; the tables themselves are described in the `entity` crate and
//!   created (on a fresh database only) by the `migration` crate.
//! - [`fanout`]: every delivery, to the rooms of a target; [`access`]: who may see a library or
//!   an item; [`api`]: the publishing API.
//! - [`bridge`]: relaying an unmodified audiobookshelf's own events, one upstream per user.
//! - [`http`]: the HTTP routes and socket paths; [`server`]: wiring it all together; [`cli`] and
//!   [`manage`]: the command line.

pub mod access;
pub mod api;
pub mod auth;
pub mod bridge;
pub mod cli;
pub mod cluster;
pub mod db;
pub mod fanout;
pub mod http;
pub mod limits;
pub mod loader;
pub mod logging;
pub mod manage;
pub mod presence;
pub mod registry;
pub mod revocation;
pub mod rooms;
pub mod server;
pub mod socket;
pub mod state;
pub mod store;
pub mod writer;
