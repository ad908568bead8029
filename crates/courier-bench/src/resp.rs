//! A minimal Redis client: RESP2 commands out, replies parsed incrementally, pipelined.

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...`
    Error(Bytes),
    /// `:1`
    Int(i64),
    /// `$3\r\nabc` (`None` for a nil bulk)
    Bulk(Option<Bytes>),
    /// `*2\r\n...` (`None` for a nil array)
    Array(Option<Vec<Reply>>),
}

/// Appends a command (an array of bulk strings).
pub fn command(args: &[&[u8]], out: &mut BytesMut) {
    out.put_u8(b'*');
    out.put_slice(args.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        out.put_slice(a.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Takes one complete reply off the front of `buf`, or `None` if it is not all there yet.
pub fn take(buf: &mut BytesMut) -> anyhow::Result<Option<Reply>> {
    let mut pos = 0;
    match parse(buf, &mut pos)? {
        Some(r) => {
            buf.advance(pos);
            Ok(Some(r))
        }
        None => Ok(None),
    }
}

fn line<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = buf.get(*pos..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    *pos += end + 2;
    Some(&rest[..end])
}

fn int(s: &[u8]) -> anyhow::Result<i64> {
    std::str::from_utf8(s)?
        .parse()
        .context("bad integer in a reply")
}

fn parse(buf: &[u8], pos: &mut usize) -> anyhow::Result<Option<Reply>> {
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    *pos += 1;
    let Some(l) = line(buf, pos) else {
        return Ok(None);
    };
    Ok(Some(match kind {
        b'+' => Reply::Simple(Bytes::copy_from_slice(l)),
        b'-' => Reply::Error(Bytes::copy_from_slice(l)),
        b':' => Reply::Int(int(l)?),
        b'$' => {
            let n = int(l)?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let n = n as usize;
                if buf.len() < *pos + n + 2 {
                    return Ok(None);
                }
                let b = Bytes::copy_from_slice(&buf[*pos..*pos + n]);
                *pos += n + 2;
                Reply::Bulk(Some(b))
            }
        }
        b'*' => {
            let n = int(l)?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    match parse(buf, pos)? {
                        Some(r) => items.push(r),
                        None => return Ok(None),
                    }
                }
                Reply::Array(Some(items))
            }
        }
        other => bail!("unknown reply type {:?}", other as char),
    }))
}

/// A connection with an output buffer: queue commands, `flush`, read replies in order.
pub struct Conn {
    stream: TcpStream,
    out: BytesMut,
    buf: BytesMut,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn open(addr: std::net::SocketAddr) -> anyhow::Result<Conn> {
        let stream = crate::client::tcp(addr, None).await?;
        Ok(Conn {
            stream,
            out: BytesMut::with_capacity(64 << 10),
            buf: BytesMut::with_capacity(64 << 10),
        })
    }

    /// Queues a command.
    pub fn queue(&mut self, args: &[&[u8]]) {
        command(args, &mut self.out);
    }

    /// Sends what was queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next reply, reading from the server if it is not buffered yet.
    pub async fn reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some(r) = self.try_reply()? {
                return Ok(r);
            }
            self.fill().await?;
        }
    }

    /// A reply that is already buffered, without waiting.
    pub fn try_reply(&mut self) -> anyhow::Result<Option<Reply>> {
        take(&mut self.buf)
    }

    /// Reads whatever the server sent next.
    pub async fn fill(&mut self) -> anyhow::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("redis closed the connection");
        }
        Ok(())
    }

    /// Sends one command and waits for its reply; an error reply is an error.
    pub async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.queue(args);
        self.flush().await?;
        match self.reply().await? {
            Reply::Error(e) => bail!("redis: {}", String::from_utf8_lossy(&e)),
            r => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies() {
        let mut out = BytesMut::new();
        command(&[b"XADD", b"s", b"*"], &mut out);
        assert_eq!(&out[..], b"*3\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n");

        let whole = b"+OK\r\n:42\r\n$-1\r\n*2\r\n$3\r\nabc\r\n*1\r\n-ERR x\r\n$5\r\nhel";
        let mut buf = BytesMut::from(&whole[..]);
        assert_eq!(take(&mut buf).unwrap(), Some(Reply::Simple("OK".into())));
        assert_eq!(take(&mut buf).unwrap(), Some(Reply::Int(42)));
        assert_eq!(take(&mut buf).unwrap(), Some(Reply::Bulk(None)));
        assert_eq!(
            take(&mut buf).unwrap(),
            Some(Reply::Array(Some(vec![
                Reply::Bulk(Some("abc".into())),
                Reply::Array(Some(vec![Reply::Error("ERR x".into())])),
            ])))
        );
        // Incomplete: nothing is consumed until the rest arrives.
        assert_eq!(take(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"lo\r\n");
        assert_eq!(
            take(&mut buf).unwrap(),
            Some(Reply::Bulk(Some("hello".into())))
        );
        assert!(buf.is_empty());
    }
}
