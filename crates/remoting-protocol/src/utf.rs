//! `utf(s)`: the short strings the handshake exchanges (protocol line, ACK,
//! headers, responses, capability), each a 2-byte big-endian length followed
//! by that many bytes of UTF-8.
//!
//! The controller writes them with `ByteBufferUtils.wrapUTF8` (standard UTF-8,
//! not Java's modified UTF-8), so `str` round-trips exactly.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest string a 2-byte length can announce.
pub const MAX_UTF_LEN: usize = u16::MAX as usize;

/// Why a `utf(s)` frame could not be written or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UtfError {
    /// The string does not fit behind a 2-byte length.
    #[error("a string of {0} bytes does not fit the 65535 bytes a handshake frame can carry")]
    TooLong(usize),
    /// The peer sent bytes that are not UTF-8.
    #[error("the peer sent a handshake string that is not UTF-8")]
    NotUtf8,
}

/// Appends `utf(s)` to `dst`.
pub fn put_utf(dst: &mut BytesMut, s: &str) -> Result<(), UtfError> {
    let len = u16::try_from(s.len()).map_err(|_| UtfError::TooLong(s.len()))?;
    dst.reserve(2 + s.len());
    dst.put_u16(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

/// `utf(s)` as a new buffer.
pub fn utf_bytes(s: &str) -> Result<Bytes, UtfError> {
    let mut buf = BytesMut::with_capacity(2 + s.len());
    put_utf(&mut buf, s)?;
    Ok(buf.freeze())
}

/// Takes one whole frame's payload off the front of `src`, or `None` (leaving
/// `src` untouched) if the frame is not complete yet. The length is at most
/// 65535 by construction, so nothing unbounded is ever reserved.
pub fn take_frame(src: &mut BytesMut) -> Option<Bytes> {
    let len = usize::from(u16::from_be_bytes([*src.first()?, *src.get(1)?]));
    if src.len() < 2 + len {
        return None;
    }
    src.advance(2);
    Some(src.split_to(len).freeze())
}

/// Takes one whole frame off `src` and reads it as UTF-8.
pub fn take_utf(src: &mut BytesMut) -> Result<Option<String>, UtfError> {
    match take_frame(src) {
        None => Ok(None),
        Some(payload) => String::from_utf8(payload.to_vec())
            .map(Some)
            .map_err(|_| UtfError::NotUtf8),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ack_is_five_bytes() {
        assert_eq!(&utf_bytes("ACK").unwrap()[..], b"\x00\x03ACK");
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut buf = BytesMut::from(&b"\x00"[..]);
        assert_eq!(take_frame(&mut buf), None);
        buf.extend_from_slice(b"\x03AC");
        assert_eq!(take_frame(&mut buf), None);
        assert_eq!(buf.len(), 4, "an incomplete frame is left in place");
        buf.extend_from_slice(b"Kxyz");
        assert_eq!(take_utf(&mut buf).unwrap().as_deref(), Some("ACK"));
        assert_eq!(&buf[..], b"xyz");
    }

    #[test]
    fn too_long_is_refused() {
        let long = "x".repeat(MAX_UTF_LEN + 1);
        assert_eq!(
            put_utf(&mut BytesMut::new(), &long),
            Err(UtfError::TooLong(MAX_UTF_LEN + 1))
        );
        assert!(put_utf(&mut BytesMut::new(), &long[1..]).is_ok());
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut buf = BytesMut::from(&b"\x00\x02\xff\xfe"[..]);
        assert_eq!(take_utf(&mut buf), Err(UtfError::NotUtf8));
    }
}
