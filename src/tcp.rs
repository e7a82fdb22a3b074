//! Socket options for every TCP connection pgrouter holds, client's or member's (`[tcp]`).

use tokio::net::TcpStream;

/// Sets TCP_NODELAY and, as `[tcp]` says, keepalive and TCP_USER_TIMEOUT on a client or member
/// socket, so a peer that vanished without a FIN or RST is found and its session released.
pub fn tune(tcp: &TcpStream, config: &crate::config::TcpConfig) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let result = if config.keepalive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(config.keepalive_idle.0)
            .with_interval(config.keepalive_interval.0)
            .with_retries(config.keepalive_count);
        sock.set_tcp_keepalive(&keepalive)
    } else {
        sock.set_keepalive(false)
    };
    let result = result.and_then(|()| {
        let user_timeout = config.user_timeout.0;
        // Zero: leave the system default in place.
        if user_timeout.is_zero() {
            Ok(())
        } else {
            sock.set_tcp_user_timeout(Some(user_timeout))
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not set TCP keepalive options");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn keepalive_options_reach_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let config = crate::config::TcpConfig {
            keepalive: true,
            keepalive_idle: crate::units::HumanDuration(Duration::from_secs(7)),
            keepalive_interval: crate::units::HumanDuration(Duration::from_secs(3)),
            keepalive_count: 4,
            user_timeout: crate::units::HumanDuration(Duration::from_millis(25_000)),
        };
        tune(&tcp, &config);
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(25))
        );
        assert!(tcp.nodelay().unwrap());
        let off = crate::config::TcpConfig {
            keepalive: false,
            ..crate::config::TcpConfig::default()
        };
        tune(&tcp, &off);
        assert!(!sock.keepalive().unwrap());
    }
}
