//! Pure codecs for the two protocol layers Courier speaks. No I/O, no async.
//!
//! - [`engine`]: Engine.IO v4 packets (`open`, `ping`, `message`, ...) as they travel in a WebSocket
//!   frame or in an HTTP long-polling payload (packets joined by 0x1E, binary as `b` + base64).
//! - [`payload`]: the arguments of an event or ack, with binary attachments, as both the server
//!   and the client hand them to applications.
//! - [`socket`]: Socket.IO v5 packets carried inside Engine.IO `message` packets
//!   (`<type>[<attachments>-][<nsp>,][<ack id>][JSON]`), and [`socket::Reassembler`], which joins a
//!   binary packet with the attachments that follow it.
//! - [`ws`]: WebSocket frames as a server reads and writes them (strict decoding of client frames
//!   into whole messages, the headers of server frames).
//!
//! Bytes flow one way through a server: WebSocket frame ([`ws::Decoder`]) -> [`engine::Packet`] ->
//! [`socket::Packet`] (+ attachments) -> application; encoding runs the same path backwards.
//! Every decoder takes untrusted input and returns an error instead of panicking; the property tests
//! and the fuzz targets hold them to that.
#![warn(missing_docs)]

pub mod engine;
pub mod payload;
pub mod socket;
pub mod ws;
