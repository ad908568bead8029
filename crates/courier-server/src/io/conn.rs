//! One client connection as the Socket.IO layer sees it: its sockets (one per joined namespace)
//! and the reassembly of binary packets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_proto::engine::Data;
use courier_proto::socket::{Complete, Packet, PacketType, Reassembler};
use serde_json::Value;

use super::Shared;
use super::message::{DisconnectReason, Payload};
use super::run_now_or_spawn;
use super::socket::{Handshake, Socket};
use crate::engine::{CloseReason, Outbound, Session};

/// One client connection as the Socket.IO layer keeps it.
pub struct Conn {
    pub(crate) session: Arc<Session>,
    pub(crate) io: Arc<Shared>,
    pub(crate) handshake: Handshake,
    // std mutexes: short critical sections, never held across an await.
    sockets: Mutex<HashMap<Arc<str>, Socket>>,
    reassembler: Mutex<Reassembler>,
}

impl Conn {
    pub(crate) fn new(session: Arc<Session>, io: Arc<Shared>, handshake: Handshake) -> Self {
        Conn {
            session,
            io,
            handshake,
            sockets: Mutex::new(HashMap::new()),
            reassembler: Mutex::new(Reassembler::default()),
        }
    }

    pub(crate) fn has_sockets(&self) -> bool {
        !self.sockets.lock().expect("sockets lock").is_empty()
    }

    fn socket(&self, nsp: &str) -> Option<Socket> {
        self.sockets.lock().expect("sockets lock").get(nsp).cloned()
    }

    pub(crate) fn remove_socket(&self, nsp: &str) -> Option<Socket> {
        self.sockets.lock().expect("sockets lock").remove(nsp)
    }

    pub(crate) fn on_message(self: &Arc<Self>, data: Data) {
        let result = {
            let mut r = self.reassembler.lock().expect("reassembler lock");
            match data {
                Data::Text(t) => r.text(&t),
                Data::Binary(b) => r.binary(b),
            }
        };
        match result {
            Ok(Some(complete)) => self.on_packet(complete),
            Ok(None) => {}
            Err(e) => {
                tracing::info!(sid = %self.session.sid(), error = %e, "closing connection: malformed Socket.IO packet");
                self.session.close(CloseReason::ParseError);
            }
        }
    }

    fn on_packet(
        self: &Arc<Self>,
        Complete {
            packet,
            attachments,
        }: Complete,
    ) {
        match packet.kind {
            PacketType::Connect => self.connect(packet),
            PacketType::Disconnect => {
                if let Some(s) = self.remove_socket(&packet.nsp) {
                    s.close(DisconnectReason::ClientNamespaceDisconnect);
                }
            }
            PacketType::Event | PacketType::BinaryEvent => match self.socket(&packet.nsp) {
                Some(s) => s.dispatch(packet, attachments),
                None => tracing::debug!(nsp = packet.nsp, "event for a namespace not joined"),
            },
            PacketType::Ack | PacketType::BinaryAck => {
                if let (Some(s), Some(id), Some(Value::Array(args))) =
                    (self.socket(&packet.nsp), packet.id, packet.data)
                {
                    s.resolve_ack(id, Payload { args, attachments });
                }
            }
            PacketType::ConnectError => {
                tracing::info!(sid = %self.session.sid(), "closing connection: client sent CONNECT_ERROR");
                self.session.close(CloseReason::ParseError);
            }
        }
    }

    fn send(&self, packet: Packet) {
        let _ = self.session.send(Outbound::Text(packet.encode_message()));
    }

    fn connect(self: &Arc<Self>, packet: Packet) {
        let nsp = packet.nsp;
        if self.socket(&nsp).is_some() {
            tracing::debug!(nsp, "CONNECT to a namespace already joined: ignored");
            return;
        }
        let Some(ns) = self.io.namespace_for(&nsp) else {
            let err = serde_json::json!({"message": "Invalid namespace"});
            self.send(Packet::new(PacketType::ConnectError, nsp, Some(err)));
            return;
        };
        let auth = packet
            .data
            .unwrap_or_else(|| Value::Object(Default::default()));
        let socket = Socket::new(ns.clone(), self.clone(), auth);
        let conn = self.clone();
        run_now_or_spawn(async move {
            for m in ns.middlewares() {
                if let Err(e) = m(socket.clone()).await {
                    tracing::debug!(nsp, message = e.message, "connection refused by middleware");
                    let p = Packet::new(PacketType::ConnectError, &nsp, Some(e.to_json()));
                    conn.send(p);
                    return;
                }
            }
            if conn.session.is_closed() {
                return;
            }
            conn.sockets
                .lock()
                .expect("sockets lock")
                .insert(ns.name_arc(), socket.clone());
            socket.attach();
            let reply = serde_json::json!({"sid": socket.id().as_ref()});
            conn.send(Packet::new(PacketType::Connect, &nsp, Some(reply)));
            tracing::debug!(sid = %socket.id(), nsp, "socket connected");
            if let Some(h) = ns.connect_handler() {
                h(socket).await;
            }
        });
    }

    pub(crate) fn on_close(&self, reason: CloseReason) {
        let sockets: Vec<Socket> = self
            .sockets
            .lock()
            .expect("sockets lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in sockets {
            s.close(DisconnectReason::Connection(reason));
        }
    }
}
