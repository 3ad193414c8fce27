//! Frame I/O over one QUIC stream: a bounded frame reader and a batching writer.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::frame::{self, LEN_PREFIX};
use crate::{Frame, FrameError};

/// Most bytes taken from the stream per read. A reader's buffer never exceeds one frame
/// (at most `max_frame_len`) plus one chunk.
const READ_CHUNK: usize = 64 * 1024;
/// Most queued frames written in one batch.
const WRITE_BATCH: usize = 64;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    /// The peer sent an invalid frame or an oversized length prefix.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream or the connection failed.
    #[error(transparent)]
    Stream(#[from] quinn::ReadError),
}

impl ReadFrameError {
    /// True when the peer broke the protocol (as opposed to the connection failing).
    pub(crate) fn is_protocol_violation(&self) -> bool {
        !matches!(self, ReadFrameError::Stream(_))
    }
}

/// Reads length-prefixed frames from a receive stream.
#[derive(Debug)]
pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    max_frame_len: u32,
}

impl FrameReader {
    pub(crate) fn new(recv: quinn::RecvStream, max_frame_len: u32) -> Self {
        FrameReader { recv, buf: BytesMut::new(), max_frame_len }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly between frames.
    ///
    /// Cancel-safe: bytes are only moved into the buffer after a read completed, so a
    /// dropped call loses nothing.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        loop {
            // The length is checked as soon as the prefix is complete, before the buffer
            // grows for the body.
            if let Some(len) = frame::check(&self.buf, self.max_frame_len)? {
                let total = LEN_PREFIX + len;
                if self.buf.len() >= total {
                    let bytes = self.buf.split_to(total);
                    return Ok(Some(frame::decode_body(&bytes[LEN_PREFIX..])?));
                }
            }
            match self.recv.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadFrameError::Truncated),
            }
        }
    }
}

/// Encodes `frame`, refusing frames the peer would reject as too large.
pub(crate) fn encode(frame: &Frame, max_frame_len: u32) -> Result<Bytes, FrameError> {
    let bytes = frame::encode(frame)?;
    let body = bytes.len() - LEN_PREFIX;
    if body > max_frame_len as usize {
        return Err(FrameError::TooLarge { len: body as u64, max: max_frame_len });
    }
    Ok(Bytes::from(bytes))
}

/// Writes queued frames to `send` until every sender of `rx` is gone, batching whatever is
/// queued. The caller finishes the stream afterwards.
pub(crate) async fn write_loop(
    send: &mut quinn::SendStream,
    rx: &mut mpsc::Receiver<Bytes>,
) -> Result<(), quinn::WriteError> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        send.write_all_chunks(&mut batch).await?;
        batch.clear();
    }
    Ok(())
}
