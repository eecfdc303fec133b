//! `bench relay PORT TARGET`: a null TCP relay (one thread, byte copies both ways). The bench
//! runs it on the server core in place of a server under test: its added latency is the cost of
//! one more process in the path across the two cores, with no HTTP work at all, which tells
//! the machine's share of a server's added latency from the server's own.

use std::net::{Ipv4Addr, SocketAddr};

pub fn main(port: &str, target: &str) -> Result<(), String> {
    let port: u16 = port.parse().map_err(|e| format!("port `{port}`: {e}"))?;
    let target: SocketAddr = target.parse().map_err(|e| format!("target `{target}`: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
        loop {
            let (mut inbound, _) = listener.accept().await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}
