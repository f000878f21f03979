//! Reads a byte stream into stream-level XML events, reusing one buffer per connection.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::xml::{self, Item, Stanza};

const INITIAL_BUFFER: usize = 4096;
/// Larger than any stanza a server may send a client by default (256 KiB on all three).
const MAX_BUFFER: usize = 1 << 20;

pub enum Event<'a> {
    StreamOpen,
    StreamClose,
    Stanza(Stanza<'a>),
}

pub struct StanzaReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for StanzaReader {
    fn default() -> Self {
        StanzaReader {
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
        }
    }
}

impl StanzaReader {
    /// Whether bytes are buffered that have not been returned yet (must not be the case
    /// when the transport underneath is swapped, as for STARTTLS).
    pub fn has_pending(&self) -> bool {
        self.buf[self.start..self.end]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
    }

    /// The next complete event. Cancel-safe: bytes read stay in the buffer.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<Event<'_>> {
        loop {
            match xml::next_item(&self.buf[self.start..self.end]) {
                Ok(Some((item, s, e))) => {
                    let (a, b) = (self.start + s, self.start + e);
                    self.start += e;
                    return Ok(match item {
                        Item::StreamOpen => Event::StreamOpen,
                        Item::StreamClose => Event::StreamClose,
                        Item::Stanza => Event::Stanza(Stanza::new(&self.buf[a..b])),
                    });
                }
                Ok(None) => {}
                Err(xml::MalformedXml) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed XML"))
                }
            }
            self.make_room()?;
            let n = io.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
    }

    fn make_room(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end < self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else if self.buf.len() < MAX_BUFFER {
            self.buf.resize(self.buf.len() * 2, 0);
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stanza larger than 1 MiB",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_events_across_reads_and_grows() {
        let big = "x".repeat(10_000);
        let input = format!(
            "<?xml version='1.0'?><stream:stream id='1'> <message><body>{big}</body></message><iq/></stream:stream>"
        );
        // A reader that hands out 7 bytes at a time.
        let (mut tx, mut rx) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(input.as_bytes()).await.unwrap();
        });
        let mut r = StanzaReader::default();
        assert!(matches!(r.next(&mut rx).await.unwrap(), Event::StreamOpen));
        match r.next(&mut rx).await.unwrap() {
            Event::Stanza(s) => assert_eq!(s.child_text(b"body").unwrap().len(), 10_000),
            _ => panic!("expected the message"),
        }
        match r.next(&mut rx).await.unwrap() {
            Event::Stanza(s) => assert_eq!(s.name(), b"iq"),
            _ => panic!("expected the iq"),
        }
        assert!(matches!(r.next(&mut rx).await.unwrap(), Event::StreamClose));
        assert!(!r.has_pending());
        writer.await.unwrap();
        assert_eq!(
            r.next(&mut rx).await.err().unwrap().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
