//! DNS over TCP (RFC 1035 4.2.2, RFC 7766): each message is preceded by its
//! length as two bytes.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One TCP connection to a DNS server.
pub(crate) struct Connection {
    stream: TcpStream,
}

impl Connection {
    /// Connects (the caller bounds the time).
    pub(crate) async fn connect(server: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream })
    }

    /// Sends one message.
    pub(crate) async fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let len = u16::try_from(message.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a DNS message of {} bytes does not fit TCP framing",
                    message.len()
                ),
            )
        })?;
        let mut framed = Vec::with_capacity(message.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(message);
        self.stream.write_all(&framed).await?;
        self.stream.flush().await
    }

    /// Receives one message.
    pub(crate) async fn receive(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 2];
        self.stream.read_exact(&mut len).await?;
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.stream.read_exact(&mut message).await?;
        Ok(message)
    }
}
