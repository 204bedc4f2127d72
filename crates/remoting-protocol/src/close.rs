//! Ending a channel on purpose (PROTOCOL.md section 5).
//!
//! A real controller ignores a TLS `close_notify`: only a plain TCP close or
//! a `hudson.remoting.Channel$CloseCommand` takes the node offline at once.
//! So an agent that leaves sends this command at a command boundary, waits
//! for the controller's own close, and then drops the connection.
//!
//! The command is built here rather than asked of the engine: the stdio
//! engine has no request for an orderly close (closing its stdin makes it
//! terminate without sending one), and the agent must be able to leave even
//! when the engine does not cooperate.

use bytes::{BufMut, BytesMut};

use crate::chunk::ChunkHeader;

/// The class of the command that ends a channel in an orderly way.
pub const CLOSE_COMMAND_CLASS: &str = "hudson.remoting.Channel$CloseCommand";

/// `serialVersionUID` of `Channel$CloseCommand`, as recorded.
const CLOSE_COMMAND_UID: u64 = 0x0d80_4888_bb5b_d983;
/// The superclass `hudson.remoting.Command` and its one field.
const COMMAND_CLASS: &str = "hudson.remoting.Command";
const COMMAND_UID: u64 = 1;
const CREATED_AT: &str = "createdAt";
const CREATED_AT_TYPE: &str = "Ljava/lang/Exception;";

// Java object serialization constants (java.io.ObjectStreamConstants).
const STREAM_MAGIC_VERSION: [u8; 4] = [0xac, 0xed, 0x00, 0x05];
const TC_OBJECT: u8 = 0x73;
const TC_CLASSDESC: u8 = 0x72;
const TC_STRING: u8 = 0x74;
const TC_NULL: u8 = 0x70;
const TC_ENDBLOCKDATA: u8 = 0x78;
const SC_SERIALIZABLE: u8 = 0x02;

/// Whether a command's class (as [`crate::command::class_name`] reads it)
/// is the orderly close.
pub fn is_close(class: Option<&str>) -> bool {
    class == Some(CLOSE_COMMAND_CLASS)
}

/// The payload of a minimal `Channel$CloseCommand`: `createdAt` null, byte
/// for byte what the recording's agent side sent
/// (`agent-initiated-close.jsonl` seq 19).
pub fn close_command_payload() -> BytesMut {
    fn put_name(out: &mut BytesMut, name: &str) {
        // Names here are short constants: the u16 length cannot overflow.
        out.put_u16(name.len() as u16);
        out.put_slice(name.as_bytes());
    }
    let mut out = BytesMut::with_capacity(160);
    out.put_slice(&STREAM_MAGIC_VERSION);
    out.put_u8(TC_OBJECT);
    // class Channel$CloseCommand: no fields of its own
    out.put_u8(TC_CLASSDESC);
    put_name(&mut out, CLOSE_COMMAND_CLASS);
    out.put_u64(CLOSE_COMMAND_UID);
    out.put_u8(SC_SERIALIZABLE);
    out.put_u16(0);
    out.put_u8(TC_ENDBLOCKDATA);
    // superclass Command: one object field, `Exception createdAt`
    out.put_u8(TC_CLASSDESC);
    put_name(&mut out, COMMAND_CLASS);
    out.put_u64(COMMAND_UID);
    out.put_u8(SC_SERIALIZABLE);
    out.put_u16(1);
    out.put_u8(b'L');
    put_name(&mut out, CREATED_AT);
    out.put_u8(TC_STRING);
    put_name(&mut out, CREATED_AT_TYPE);
    out.put_u8(TC_ENDBLOCKDATA);
    out.put_u8(TC_NULL); // no further superclass
    out.put_u8(TC_NULL); // createdAt = null
    out
}

/// Appends the close command as one chunk (header included) to `dst`.
pub fn put_close_command(dst: &mut BytesMut) {
    let payload = close_command_payload();
    dst.put_slice(
        &ChunkHeader {
            len: payload.len(),
            last: true,
        }
        .to_bytes(),
    );
    dst.put_slice(&payload);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::command::class_name;

    #[test]
    fn reads_as_a_close() {
        let payload = close_command_payload();
        assert!(is_close(class_name(&payload)));
        assert!(!is_close(Some("hudson.remoting.Response")));
        assert!(!is_close(None));
        let mut chunk = BytesMut::new();
        put_close_command(&mut chunk);
        assert_eq!(&chunk[..2], &[0x00, 0x84], "one last chunk of 132 bytes");
        assert_eq!(&chunk[2..], &payload[..]);
    }
}
