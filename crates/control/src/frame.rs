//! Line framing for the control socket, shared by the agent's server and the
//! client: reading a line with a bound on its length *before* buffering it,
//! and writing one JSON value as one line.

use std::io;

use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Why a line could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent (or we were about to send) a line longer than allowed.
    /// The stream cannot be resynchronised cheaply: close it.
    #[error("line longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The line is not UTF-8; it was consumed whole, so the stream is still
    /// in step.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one line into `line` (cleared first, without its `\n` or a `\r`
/// before it).
///
/// `Ok(None)` is a clean end of stream (nothing buffered); a last line
/// without a newline is returned as a line. At most `max` bytes are
/// buffered: a longer line is an error as soon as the bound is passed, not
/// after reading it all.
pub async fn read_line_bounded<R>(
    reader: &mut R,
    line: &mut String,
    max: usize,
) -> Result<Option<()>, FrameError>
where
    R: AsyncBufRead + Unpin + ?Sized,
{
    line.clear();
    let mut bytes = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if bytes.is_empty() {
                return Ok(None);
            }
            break;
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(end) => {
                if bytes.len() + end > max {
                    return Err(FrameError::TooLong { max });
                }
                bytes.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                break;
            }
            None => {
                let n = available.len();
                if bytes.len() + n > max {
                    return Err(FrameError::TooLong { max });
                }
                bytes.extend_from_slice(available);
                reader.consume(n);
            }
        }
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    *line = String::from_utf8(bytes).map_err(|_| FrameError::NotUtf8)?;
    Ok(Some(()))
}

/// Writes `value` as one JSON line and flushes. A line that would be longer
/// than [`crate::MAX_LINE`] is not written ([`FrameError::TooLong`]), since
/// the other side would refuse it.
pub async fn write_json_line<W, T>(writer: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize + ?Sized,
{
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    if bytes.len() > crate::MAX_LINE {
        return Err(FrameError::TooLong {
            max: crate::MAX_LINE,
        });
    }
    // Compact JSON escapes newlines inside strings, so this is the only one.
    bytes.push(b'\n');
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::BufReader;

    async fn lines(input: &[u8], capacity: usize, max: usize) -> Vec<Result<String, String>> {
        let mut reader = BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        let mut line = String::new();
        loop {
            match read_line_bounded(&mut reader, &mut line, max).await {
                Ok(Some(())) => out.push(Ok(line.clone())),
                Ok(None) => break,
                Err(FrameError::NotUtf8) => out.push(Err("utf8".into())),
                Err(err) => {
                    out.push(Err(err.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn lines_split_across_reads_are_joined() {
        let input = b"{\"a\":1}\r\n\n{\"b\":2}\nlast";
        for capacity in 1..=input.len() {
            assert_eq!(
                lines(input, capacity, 16).await,
                vec![
                    Ok("{\"a\":1}".into()),
                    Ok(String::new()),
                    Ok("{\"b\":2}".into()),
                    Ok("last".into())
                ],
                "capacity {capacity}"
            );
        }
    }

    #[tokio::test]
    async fn a_line_of_exactly_max_passes_and_one_more_byte_fails() {
        let ok = [vec![b'x'; 8], b"\n".to_vec()].concat();
        assert_eq!(lines(&ok, 3, 8).await, vec![Ok("x".repeat(8))]);
        let long = [vec![b'x'; 9], b"\n".to_vec()].concat();
        for capacity in [1, 4, 64] {
            assert_eq!(
                lines(&long, capacity, 8).await,
                vec![Err("line longer than 8 bytes".into())]
            );
        }
        // Unterminated too: the bound does not wait for a newline.
        assert_eq!(
            lines(&[b'x'; 100], 7, 8).await,
            vec![Err("line longer than 8 bytes".into())]
        );
    }

    #[tokio::test]
    async fn invalid_utf8_costs_one_line_only() {
        assert_eq!(
            lines(b"\xff\xfe\nok\n", 2, 16).await,
            vec![Err("utf8".into()), Ok("ok".into())]
        );
    }

    #[tokio::test]
    async fn written_lines_end_in_one_newline_and_respect_the_bound() {
        let mut out = Vec::new();
        write_json_line(&mut out, &serde_json::json!({"s": "a\nb"}))
            .await
            .unwrap();
        assert_eq!(out, b"{\"s\":\"a\\nb\"}\n");
        let huge = "x".repeat(crate::MAX_LINE);
        let mut out = Vec::new();
        assert!(matches!(
            write_json_line(&mut out, &huge).await,
            Err(FrameError::TooLong { .. })
        ));
        assert!(out.is_empty());
    }
}
