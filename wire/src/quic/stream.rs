//! Frame I/O over one QUIC stream: a bounded frame reader and a batching writer. Generic
//! over the stream ([`ChunkRead`], [`ChunkWrite`]): a raw QUIC stream natively, a
//! WebTransport stream for browsers (feature `webtransport`).

use std::future::Future;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// A receive stream frames are read from.
pub(crate) trait ChunkRead: Send + 'static {
    /// The next chunk of at most `max` bytes, in order; `None` once the peer finished.
    fn next_chunk(&mut self, max: usize) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

/// A send stream frames are written to.
pub(crate) trait ChunkWrite: Send + 'static {
    /// Writes every chunk, in order.
    fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> impl Future<Output = Result<(), String>> + Send;
    /// Finishes the stream (no more data).
    fn finish_stream(&mut self);
    /// Resolves once the peer has acknowledged everything or stopped the stream.
    fn acknowledged(&mut self) -> impl Future<Output = ()> + Send;
}

impl ChunkRead for quinn::RecvStream {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, String> {
        match self.read_chunk(max, true).await {
            Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ChunkWrite for quinn::SendStream {
    async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), String> {
        quinn::SendStream::write_all_chunks(self, chunks).await.map_err(|e| e.to_string())
    }
    fn finish_stream(&mut self) {
        let _ = self.finish();
    }
    async fn acknowledged(&mut self) {
        let _ = self.stopped().await;
    }
}

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
    #[error("{0}")]
    Stream(String),
}

impl ReadFrameError {
    /// True when the peer broke the protocol (as opposed to the connection failing).
    pub(crate) fn is_protocol_violation(&self) -> bool {
        !matches!(self, ReadFrameError::Stream(_))
    }
}

/// Reads length-prefixed frames from a receive stream.
#[derive(Debug)]
pub(crate) struct FrameReader<R = quinn::RecvStream> {
    recv: R,
    buf: BytesMut,
    max_frame_len: u32,
}

impl<R: ChunkRead> FrameReader<R> {
    pub(crate) fn new(recv: R, max_frame_len: u32) -> Self {
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
            match self.recv.next_chunk(READ_CHUNK).await.map_err(ReadFrameError::Stream)? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadFrameError::Truncated),
            }
        }
    }
}

/// Encodes `frame`, refusing frames the peer would reject as too large.
pub(crate) fn encode(frame: &Frame, max_frame_len: u32) -> Result<Bytes, FrameError> {
    // Frames are encoded into a per-thread buffer and split off it: consecutive frames share
    // one allocation (made once per ENCODE_BLOCK bytes of frames, not once per frame), and the
    // block is freed when the last frame in it has been sent.
    ENCODE_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.capacity() - buf.len() < ENCODE_BLOCK / 4 {
            buf.reserve(ENCODE_BLOCK);
        }
        buf.extend_from_slice(&[0u8; LEN_PREFIX]);
        let encoded = postcard::serialize_with_flavor(frame, BytesMutFlavor(&mut buf));
        let body = buf.len() - LEN_PREFIX;
        let refuse = match encoded {
            Err(e) => Some(FrameError::Malformed(e.to_string())),
            Ok(()) if body > max_frame_len as usize => {
                Some(FrameError::TooLarge { len: body as u64, max: max_frame_len })
            }
            Ok(()) => None,
        };
        if let Some(e) = refuse {
            buf.clear();
            return Err(e);
        }
        let len = body as u32;
        buf[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        Ok(buf.split().freeze())
    })
}

/// Bytes reserved at a time for encoding frames.
const ENCODE_BLOCK: usize = 256 * 1024;

thread_local! {
    static ENCODE_BUF: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// postcard output into a `BytesMut`, copying slices whole (`BytesMut`'s `Extend<u8>` would
/// push byte by byte).
struct BytesMutFlavor<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for BytesMutFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.extend_from_slice(&[data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Writes queued frames to `send` until every sender of `rx` is gone, batching whatever is
/// queued. The caller finishes the stream afterwards.
pub(crate) async fn write_loop<W: ChunkWrite>(send: &mut W, rx: &mut mpsc::Receiver<Bytes>) -> Result<(), String> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        send.write_all_chunks(&mut batch).await?;
        batch.clear();
    }
    Ok(())
}
