//! Addresses as agent.jar's options write them: `HOST:PORT` (`-direct`) and
//! `-tunnel`'s `HOST:PORT`, `HOST:` or `:PORT`. The command line and a JNLP
//! file's arguments (which carry `-tunnel` too) parse them here.

use crate::settings::{HostPort, Tunnel};

/// The forms `-direct` accepts.
pub const HOST_PORT: &str = "HOST:PORT";
/// The forms `-tunnel` accepts.
pub const TUNNEL_FORMS: &str = "HOST:PORT, HOST: or :PORT";

/// Why an address does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the value is not {expected}: {reason}")]
pub struct AddressError {
    /// The accepted forms.
    pub expected: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// `HOST:PORT` or `[IPV6]:PORT`, both parts required.
pub fn host_port(value: &str) -> Result<HostPort, AddressError> {
    let bad = |reason| AddressError {
        expected: HOST_PORT,
        reason,
    };
    let (host, port) = split_host_port(value).map_err(bad)?;
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = port_number(port).map_err(bad)?;
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// `-tunnel`: `HOST:PORT`, `HOST:` or `:PORT`; the empty side keeps what the
/// controller advertises.
pub fn tunnel(value: &str) -> Result<Tunnel, AddressError> {
    let bad = |reason| AddressError {
        expected: TUNNEL_FORMS,
        reason,
    };
    let (host, port) = split_host_port(value).map_err(bad)?;
    let host = (!host.is_empty()).then(|| host.to_owned());
    let port = if port.is_empty() {
        None
    } else {
        Some(port_number(port).map_err(bad)?)
    };
    if host.is_none() && port.is_none() {
        return Err(bad("both the host and the port are empty"));
    }
    Ok(Tunnel { host, port })
}

/// Splits at the port colon; brackets are stripped from an IPv6 host.
fn split_host_port(value: &str) -> Result<(&str, &str), &'static str> {
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("no closing ']'")?;
        let port = after.strip_prefix(':').ok_or("no ':' after ']'")?;
        return Ok((host, port));
    }
    let (host, port) = value.rsplit_once(':').ok_or("no ':'")?;
    if host.contains(':') {
        // `::1:50000` is ambiguous; agent.jar users write `[::1]:50000`.
        return Err("write an IPv6 address in brackets, e.g. [::1]:50000");
    }
    Ok((host, port))
}

fn port_number(port: &str) -> Result<u16, &'static str> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port is out of range 1-65535"),
        Ok(p) => Ok(p),
    }
}
