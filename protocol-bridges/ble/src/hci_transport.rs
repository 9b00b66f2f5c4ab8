//! The HCI H4 transport to the controller: a TCP stream or a UART.
//!
//! Both carry the same H4 framing (`bt-hci-serial`), so the bridge drives a Bumble
//! virtual controller over TCP in tests and a controller chip over a UART in the field.

use std::fmt;
use std::time::Duration;

use bt_hci_serial::SerialTransport;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embedded_io_adapters::tokio_1::FromTokio;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

/// Where the controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HciTransportSpec {
    /// H4 over TCP (`tcp:HOST:PORT`).
    Tcp(String),
    /// H4 over a UART (`serial:PATH:BAUD`), 8N1 with RTS/CTS flow control.
    Serial {
        /// Device path.
        path: String,
        /// Baud rate.
        baud: u32,
    },
}

/// A text that is not an HCI transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an HCI transport: expected {expected}")]
pub struct BadTransport {
    /// The text as given.
    pub text: String,
    /// The form expected.
    pub expected: &'static str,
}

impl HciTransportSpec {
    /// Parses `tcp:127.0.0.1:9001` or `serial:/dev/ttyACM0:1000000`.
    pub fn parse(text: &str) -> Result<Self, BadTransport> {
        let bad = |expected| BadTransport {
            text: text.to_owned(),
            expected,
        };
        if let Some(address) = text.strip_prefix("tcp:") {
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(bad("tcp:HOST:PORT"));
            }
            return Ok(Self::Tcp(address.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("serial:") {
            let in_range = "serial:PATH:BAUD with baud in 9600..=4000000";
            let Some((path, baud)) = rest.rsplit_once(':') else {
                return Err(bad("serial:PATH:BAUD"));
            };
            let baud: u32 = baud.parse().map_err(|_| bad(in_range))?;
            if path.is_empty() || !(9600..=4_000_000).contains(&baud) {
                return Err(bad(in_range));
            }
            return Ok(Self::Serial {
                path: path.to_owned(),
                baud,
            });
        }
        Err(bad("tcp:HOST:PORT or serial:PATH:BAUD"))
    }

    /// Opens the transport.
    pub(crate) async fn open(&self, timeout: Duration) -> std::io::Result<HciTransport> {
        let stream: Box<dyn HciStream> = match self {
            Self::Tcp(address) => {
                let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Self::Serial { path, baud } => {
                use tokio_serial::SerialPortBuilderExt;
                let port = tokio_serial::new(path, *baud)
                    .flow_control(tokio_serial::FlowControl::Hardware)
                    .open_native_async()
                    .map_err(std::io::Error::from)?;
                Box::new(port)
            }
        };
        let (reader, writer) = tokio::io::split(stream);
        Ok(SerialTransport::new(
            FromTokio::new(reader),
            FromTokio::new(writer),
        ))
    }
}

impl fmt::Display for HciTransportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(address) => write!(f, "tcp:{address}"),
            Self::Serial { path, baud } => write!(f, "serial:{path}:{baud}"),
        }
    }
}

/// A byte stream to a controller.
pub(crate) trait HciStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> HciStream for T {}

/// The H4 transport the host stack drives.
pub(crate) type HciTransport = SerialTransport<
    NoopRawMutex,
    FromTokio<ReadHalf<Box<dyn HciStream>>>,
    FromTokio<WriteHalf<Box<dyn HciStream>>>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_transports() {
        assert_eq!(
            HciTransportSpec::parse("tcp:127.0.0.1:9001"),
            Ok(HciTransportSpec::Tcp("127.0.0.1:9001".into()))
        );
        assert_eq!(
            HciTransportSpec::parse("serial:/dev/ttyACM0:1000000"),
            Ok(HciTransportSpec::Serial {
                path: "/dev/ttyACM0".into(),
                baud: 1_000_000
            })
        );
        for bad in [
            "tcp:nohost",
            "tcp::9",
            "tcp:h:99999",
            "serial:/dev/x",
            "serial:/dev/x:12",
            "usb:0",
        ] {
            assert!(HciTransportSpec::parse(bad).is_err(), "{bad:?}");
        }
    }
}
