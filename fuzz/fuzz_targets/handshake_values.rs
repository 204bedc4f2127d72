//! The JNLP4 handshake's wire values and the stdio engine's preamble: the
//! connection headers (`remoting_protocol::Headers`), `utf(s)` frames, the
//! capability and the instance identity, `remoting_protocol::preamble`.
//!
//! Input: byte 0 sets the read size for the preamble, the rest is tried as
//! each of them. Checks: no panic; headers and capabilities that parse
//! encode to text that parses back to the same value; a frame is taken only
//! whole; the preamble reader gives the same answer for reads of any size,
//! and never keeps more noise than its bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use remoting_protocol::capability::CapabilityError;
use remoting_protocol::preamble::{PreambleError, PreambleReader, MAX_NOISE};
use remoting_protocol::utf::take_utf;
use remoting_protocol::{Capability, Headers, InstanceIdentity};

/// The preamble read in pieces of `step` bytes: the capability text (or
/// why there is none), and the bytes left for the chunk stream after it.
fn preamble(stream: &[u8], step: usize) -> (Result<Option<String>, String>, Vec<u8>) {
    let mut reader = PreambleReader::new();
    let mut buf = BytesMut::new();
    let mut at = 0;
    while at < stream.len() {
        let end = stream.len().min(at + step);
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        match reader.feed(&mut buf) {
            Ok(None) => {}
            Ok(Some(found)) => {
                assert!(found.noise.len() <= MAX_NOISE);
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&stream[at..]);
                return (Ok(Some(found.capability_text)), rest);
            }
            Err(PreambleError::NoPreamble(n)) => {
                assert!(n > MAX_NOISE);
                return (Err("no preamble".into()), Vec::new());
            }
            // The length in a too-long refusal depends on where it is noticed.
            Err(PreambleError::Capability(CapabilityError::TooLong(_))) => {
                return (Err("capability too long".into()), Vec::new())
            }
            Err(err) => return (Err(err.to_string()), Vec::new()),
        }
    }
    (Ok(None), Vec::new())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);

    if let Ok(headers) = Headers::decode(&text) {
        let encoded = headers.encode();
        match Headers::decode(&encoded) {
            Ok(back) => assert_eq!(back, headers, "headers changed through {encoded:?}"),
            Err(err) => panic!("encoded headers {encoded:?} do not parse: {err}"),
        }
        let _ = format!("{headers:?}");
    }

    if let Ok(capability) = Capability::from_base64(&text) {
        let back = Capability::from_base64(&capability.to_base64());
        assert_eq!(back, Ok(capability));
    }

    if let Ok(identity) = InstanceIdentity::from_base64(&text) {
        let back = InstanceIdentity::from_base64(&identity.to_base64());
        assert!(back.is_ok_and(|b| b.spki_der() == identity.spki_der()));
        let _ = identity.fingerprint();
    }

    let mut frames = BytesMut::from(rest);
    loop {
        match take_utf(&mut frames) {
            Ok(Some(s)) => assert!(s.len() <= usize::from(u16::MAX)),
            // A frame is taken only whole: what stays is one cut short.
            Ok(None) => {
                if let [a, b, ..] = frames[..] {
                    assert!(frames.len() < 2 + usize::from(u16::from_be_bytes([a, b])));
                }
                break;
            }
            // The handshake ends at a frame that is not UTF-8.
            Err(_) => break,
        }
    }

    let whole = preamble(rest, rest.len().max(1));
    let pieces = preamble(rest, usize::from(step) + 1);
    assert_eq!(
        whole,
        pieces,
        "reads of {} bytes changed the preamble",
        usize::from(step) + 1
    );
});
