//! One socket's requests: ids, frames and the answers waiting for them. Pure: the socket
//! itself (a browser or Node.js WebSocket) lives in the wasm glue, which feeds every
//! received message to [`Mux::on_message`].

use std::collections::HashMap;

use futures::channel::oneshot;
use tessera_wire::frame::{self, DEFAULT_MAX_FRAME_LEN};
use tessera_wire::{Error, Frame, FrameBody, HelloAck, Request, Response, TokenHello, TransportError};

/// The answer a request waits for.
pub type Answer = Result<Response, TransportError>;

/// What a received message was.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// The handshake answer.
    HelloAck(Result<HelloAck, Error>),
    /// A response, handed to its waiting request (or dropped if it gave up).
    Answered,
}

/// Request ids and waiting answers of one socket.
#[derive(Debug, Default)]
pub struct Mux {
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Answer>>,
}

/// The `Hello` a web client sends first, carrying its token.
pub fn hello(token: &str) -> Vec<u8> {
    // A token under the token size limit always fits a frame.
    frame::encode(&Frame { request_id: 0, body: FrameBody::TokenHello(TokenHello::new(token)) }).unwrap_or_default()
}

impl Mux {
    /// Frames `request` under a fresh id and registers its answer. Fails, with nothing
    /// sent, when the request exceeds the frame limit.
    pub fn request(&mut self, request: Request) -> Result<(u64, Vec<u8>, oneshot::Receiver<Answer>), TransportError> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = frame::encode(&Frame::request(id, request)).map_err(TransportError::Encode)?;
        if bytes.len() > DEFAULT_MAX_FRAME_LEN as usize + frame::LEN_PREFIX {
            return Err(TransportError::Encode(tessera_wire::FrameError::TooLarge {
                len: bytes.len() as u64,
                max: DEFAULT_MAX_FRAME_LEN,
            }));
        }
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx);
        Ok((id, bytes, rx))
    }

    /// Forgets request `id` (it timed out or could not be sent).
    pub fn cancel(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// Requests waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Handles one received message. An error means the peer broke the protocol: the
    /// socket must be closed (and [`Mux::fail_all`] called).
    pub fn on_message(&mut self, data: &[u8]) -> Result<Incoming, String> {
        let frame = match frame::decode(data, DEFAULT_MAX_FRAME_LEN) {
            Ok(Some((frame, used))) if used == data.len() => frame,
            Ok(Some(_)) => return Err("a message holds more than one frame".into()),
            Ok(None) => return Err("a message holds an incomplete frame".into()),
            Err(e) => return Err(e.to_string()),
        };
        match frame.body {
            FrameBody::HelloAck(ack) => Ok(Incoming::HelloAck(ack)),
            FrameBody::Response(response) => {
                if let Some(tx) = self.pending.remove(&frame.request_id) {
                    // The request may have given up (timed out) meanwhile.
                    let _ = tx.send(Ok(response));
                }
                Ok(Incoming::Answered)
            }
            _ => Err("unexpected frame from the server".into()),
        }
    }

    /// Fails every waiting request: the socket is gone, so each may or may not have been
    /// delivered ([`TransportError::ConnectionLost`]).
    pub fn fail_all(&mut self, reason: &str) {
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(TransportError::ConnectionLost(reason.to_string())));
        }
    }
}

/// Reassembles frames from a byte stream (WebTransport), where chunk boundaries are not
/// frame boundaries. Each frame comes out whole, length prefix included, as a WebSocket
/// message carries it.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
}

impl FrameBuffer {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived. An error (an announced length over the
    /// frame limit) means the stream is unusable; it is checked before the frame arrives.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        match frame::check(&self.buf, DEFAULT_MAX_FRAME_LEN) {
            Ok(Some(len)) if self.buf.len() >= frame::LEN_PREFIX + len => {
                let rest = self.buf.split_off(frame::LEN_PREFIX + len);
                Ok(Some(std::mem::replace(&mut self.buf, rest)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tessera_wire::{KvResponse, PdRequest, ResponseBody, Role, PROTOCOL_VERSION};

    fn answer(id: u64, response: Response) -> Vec<u8> {
        frame::encode(&Frame::response(id, response)).unwrap()
    }

    #[test]
    fn answers_reach_their_requests_in_any_order() {
        let mut mux = Mux::default();
        let (a, _, mut rx_a) = mux.request(Request::Pd(PdRequest::GetNodes)).unwrap();
        let (b, _, mut rx_b) = mux.request(Request::Pd(PdRequest::AllocSession)).unwrap();
        assert_ne!(a, b);
        let value = Ok(ResponseBody::Kv(KvResponse::Value(None)));
        assert_eq!(mux.on_message(&answer(b, value.clone())), Ok(Incoming::Answered));
        assert!(matches!(rx_b.try_recv().unwrap(), Some(Ok(v)) if v == value));
        assert!(rx_a.try_recv().unwrap().is_none(), "a is still waiting");
        assert_eq!(mux.in_flight(), 1);
        // An answer to a forgotten request is dropped quietly.
        mux.cancel(a);
        assert_eq!(mux.on_message(&answer(a, Err(Error::DeadlineExceeded))), Ok(Incoming::Answered));
        assert!(rx_a.now_or_never().unwrap().is_err(), "cancelled");
    }

    #[test]
    fn a_lost_socket_fails_every_waiting_request_as_maybe_delivered() {
        let mut mux = Mux::default();
        let (_, _, rx) = mux.request(Request::Pd(PdRequest::GetNodes)).unwrap();
        mux.fail_all("closed");
        let failure = rx.now_or_never().unwrap().unwrap().unwrap_err();
        assert!(failure.may_have_been_delivered(), "{failure:?}");
        assert_eq!(mux.in_flight(), 0);
    }

    #[test]
    fn the_handshake_answer_and_protocol_violations_are_recognised() {
        let mut mux = Mux::default();
        let ack = HelloAck { protocol_version: PROTOCOL_VERSION, role: Role::Pd };
        let bytes = frame::encode(&Frame { request_id: 0, body: FrameBody::HelloAck(Ok(ack.clone())) }).unwrap();
        assert_eq!(mux.on_message(&bytes), Ok(Incoming::HelloAck(Ok(ack))));
        assert!(mux.on_message(&[0, 0, 0, 9, 1]).is_err(), "truncated");
        assert!(mux.on_message(&[0xff; 8]).is_err(), "oversized prefix");
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert!(mux.on_message(&two).is_err(), "two frames in one message");
        assert!(mux.on_message(&hello("t")).is_err(), "a server never says Hello");
    }

    #[test]
    fn the_hello_carries_the_token() {
        let (frame, _) = frame::decode(&hello("tst1.abc.def"), DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
        let FrameBody::TokenHello(hello) = frame.body else { panic!("{frame:?}") };
        assert_eq!(hello.token, "tst1.abc.def");
        assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    }

    #[test]
    fn an_oversized_request_is_refused_before_sending() {
        use tessera_wire::{KvOp, KvRequest, ReadConsistency, RegionEpoch, RegionId, RequestHeader, WriteCommand};
        let header = RequestHeader {
            region_id: RegionId(1),
            epoch: RegionEpoch::default(),
            timeout_ms: 0,
            consistency: ReadConsistency::Linearizable,
        };
        let value = vec![0u8; DEFAULT_MAX_FRAME_LEN as usize + 1];
        let op = KvOp::Write { session: None, command: WriteCommand::Put { key: b"k".to_vec(), value } };
        let mut mux = Mux::default();
        let refused = mux.request(Request::Kv(KvRequest { header, op })).unwrap_err();
        assert!(!refused.may_have_been_delivered());
        assert_eq!(mux.in_flight(), 0);
    }

    #[test]
    fn frames_are_reassembled_across_chunk_boundaries() {
        let a = hello("first");
        let b = hello("second token");
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        for split in [1, 3, 4, a.len() - 1, a.len(), a.len() + 2, stream.len()] {
            let mut buffer = FrameBuffer::default();
            let mut frames = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                buffer.push(chunk);
                while let Some(frame) = buffer.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames, vec![a.clone(), b.clone()], "split at {split}");
        }
        let mut hostile = FrameBuffer::default();
        hostile.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(hostile.next_frame().is_err(), "an oversized length is refused before its body");
    }
}
