//! The PROXY protocol, version 2 (HAProxy's binary header), from a trusted L4 load
//! balancer: the connection starts with the client's address, so it survives the
//! balancer. Only peers in `server.proxy_protocol_from` are read this way; from them
//! the header is required (a connection without one is closed), from anyone else a
//! header is never looked for, so nobody can claim an address by sending one.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The twelve bytes every version 2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the connection did not start with a PROXY protocol v2 header")]
    Missing,
    #[error("PROXY protocol header: version {0} (only 2 is read)")]
    Version(u8),
    #[error("PROXY protocol header: unknown command {0}")]
    Command(u8),
    #[error("PROXY protocol header: {0} address bytes are too few for its family")]
    Short(usize),
    #[error("PROXY protocol header: the connection ended inside it")]
    Truncated,
    #[error("PROXY protocol header: {0}")]
    Io(io::ErrorKind),
}

/// What the balancer said about the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client's connection, relayed: its source address.
    Client(SocketAddr),
    /// The balancer's own connection (a health check), or a family (UNIX sockets,
    /// UDP) that names no TCP client: the peer's address stands.
    Local,
}

/// Reads exactly the header from the start of `stream`, leaving the rest unread.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Origin, HeaderError> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await.map_err(eof)?;
    let (command, family, len) = fixed_part(&fixed)?;
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await.map_err(eof)?;
    origin(command, family, &rest)
}

fn eof(e: io::Error) -> HeaderError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => HeaderError::Truncated,
        kind => HeaderError::Io(kind),
    }
}

/// The command, the address family and the length of what follows.
fn fixed_part(fixed: &[u8; 16]) -> Result<(u8, u8, usize), HeaderError> {
    if fixed[..12] != SIGNATURE {
        return Err(HeaderError::Missing);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(HeaderError::Version(version));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    Ok((fixed[12] & 0x0f, fixed[13], len))
}

fn origin(command: u8, family: u8, rest: &[u8]) -> Result<Origin, HeaderError> {
    match command {
        0 => return Ok(Origin::Local),
        1 => {}
        other => return Err(HeaderError::Command(other)),
    }
    // The high nibble is the address family, the low one the transport (1: stream);
    // what follows the addresses (TLVs) is not needed.
    let address = match family {
        0x11 => {
            let a = rest.get(..12).ok_or(HeaderError::Short(rest.len()))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]]))
        }
        0x21 => {
            let a = rest.get(..36).ok_or(HeaderError::Short(rest.len()))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            SocketAddr::new(IpAddr::V6(ip), u16::from_be_bytes([a[32], a[33]]))
        }
        _ => return Ok(Origin::Local),
    };
    Ok(Origin::Client(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 2 header for `client` connecting to `server`, as a balancer sends it.
    fn header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.push(0x21);
        match (client, server) {
            (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                out.extend_from_slice(&[0x11, 0, 12]);
                out.extend_from_slice(&c.ip().octets());
                out.extend_from_slice(&s.ip().octets());
                out.extend_from_slice(&c.port().to_be_bytes());
                out.extend_from_slice(&s.port().to_be_bytes());
            }
            (c, s) => {
                let v6 = |a: SocketAddr| match a.ip() {
                    IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                    IpAddr::V6(ip) => ip,
                };
                out.extend_from_slice(&[0x21, 0, 36]);
                out.extend_from_slice(&v6(c).octets());
                out.extend_from_slice(&v6(s).octets());
                out.extend_from_slice(&c.port().to_be_bytes());
                out.extend_from_slice(&s.port().to_be_bytes());
            }
        }
        out
    }

    async fn parse(bytes: &[u8]) -> (Result<Origin, HeaderError>, Vec<u8>) {
        let mut reader = bytes;
        let origin = read(&mut reader).await;
        (origin, reader.to_vec())
    }

    #[tokio::test]
    async fn reads_the_client_and_leaves_the_request() {
        let client: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let server: SocketAddr = "10.0.0.2:443".parse().unwrap();
        let mut bytes = header(client, server);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (origin, rest) = parse(&bytes).await;
        assert_eq!(origin, Ok(Origin::Client(client)));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let client: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let server: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let (origin, rest) = parse(&header(client, server)).await;
        assert_eq!((origin, rest.len()), (Ok(Origin::Client(client)), 0));
    }

    #[tokio::test]
    async fn skips_tlvs_and_takes_local_as_the_peer() {
        let client: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let mut bytes = header(client, "10.0.0.2:80".parse().unwrap());
        // Three TLV bytes after the addresses, counted in the length.
        bytes[15] += 3;
        bytes.extend_from_slice(&[0x04, 0, 0, b'X']);
        let (origin, rest) = parse(&bytes).await;
        assert_eq!((origin, rest), (Ok(Origin::Client(client)), b"X".to_vec()));

        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await.0, Ok(Origin::Local));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let good = header("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap());
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.0,
            Err(HeaderError::Missing)
        );
        // Version 1 is text; only 2 is read.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 5 9\r\n").await.0,
            Err(HeaderError::Missing)
        );
        let mut v3 = good.clone();
        v3[12] = 0x31;
        assert_eq!(parse(&v3).await.0, Err(HeaderError::Version(3)));
        let mut command = good.clone();
        command[12] = 0x2f;
        assert_eq!(parse(&command).await.0, Err(HeaderError::Command(15)));
        let mut short = good.clone();
        short[15] = 4;
        short.truncate(20);
        assert_eq!(parse(&short).await.0, Err(HeaderError::Short(4)));
        for cut in [3, 15, 20] {
            assert_eq!(parse(&good[..cut]).await.0, Err(HeaderError::Truncated));
        }
    }
}
