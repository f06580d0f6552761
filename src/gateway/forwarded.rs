//! Who the client is when a proxy stands in between: `X-Forwarded-For` is believed only from
//! the proxies named in `gateway.trusted_proxies`.
//!
//! A client can put anything into `X-Forwarded-For`; a proxy appends the address it saw. So
//! the list is read from the right, skipping trusted proxies, and the first address that is
//! not one is the client (as nginx's `real_ip_recursive` and Envoy's `xff_num_trusted_hops`
//! do). Whatever a client wrote further left is never read.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::ClientAddress;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts the peers in `networks`.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self { networks }
    }

    /// Whether `address` is a trusted proxy.
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.networks.iter().any(|network| network.contains(&address))
    }

    /// The client behind the TCP `peer`, given the request's `X-Forwarded-For` values in
    /// order (a request may repeat the header).
    ///
    /// From a trusted peer, the right-most address that is not a trusted proxy (or the
    /// left-most one if all are); an entry that is not an address ends the walk at the proxy
    /// that wrote it. From an untrusted peer, the peer, with the last address it claims to
    /// forward for kept apart (see [`ClientAddress::Untrusted`]).
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> ClientAddress {
        let peer = peer.to_canonical();
        let values: Vec<&str> = forwarded_for.into_iter().collect();
        let mut hops = values.iter().flat_map(|value| value.split(',')).map(str::trim).rev();
        if !self.trusts(peer) {
            return match hops.next().and_then(parse_hop) {
                Some(claimed) => ClientAddress::Untrusted { peer, claimed },
                None => ClientAddress::Known(peer),
            };
        }
        let mut client = peer;
        for hop in hops {
            let Some(address) = parse_hop(hop) else { break };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        ClientAddress::Known(client)
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|socket| socket.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(networks.iter().map(|network| network.parse().unwrap()).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_trusted_proxy_reports_the_client_it_saw() {
        let trusted = proxies(&["10.0.0.0/8", "::1/128"]);
        let table: [(&str, &[&str], &str); 7] = [
            // The proxy appended the client; what the client wrote further left is ignored.
            ("10.0.0.1", &["6.6.6.6, 1.2.3.4"], "1.2.3.4"),
            // Two trusted hops: skip both.
            ("10.0.0.1", &["1.2.3.4, 10.0.0.2"], "1.2.3.4"),
            // Repeated headers are one list, in order.
            ("10.0.0.1", &["6.6.6.6", "1.2.3.4"], "1.2.3.4"),
            // No header: the peer itself.
            ("10.0.0.1", &[], "10.0.0.1"),
            // Garbage written by a hop ends the walk at the proxy that accepted it.
            ("10.0.0.1", &["1.2.3.4, bogus"], "10.0.0.1"),
            ("10.0.0.1", &["[2001:db8::1]:443"], "2001:db8::1"),
            ("::1", &["::ffff:1.2.3.4"], "1.2.3.4"),
        ];
        for (peer, headers, client) in table {
            assert_eq!(
                trusted.client(ip(peer), headers.iter().copied()),
                ClientAddress::Known(ip(client)),
                "{peer} {headers:?}"
            );
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let answer = trusted.client(ip("192.0.2.7"), ["10.0.0.1, 1.2.3.4"]);
        assert_eq!(answer, ClientAddress::Untrusted { peer: ip("192.0.2.7"), claimed: ip("1.2.3.4") });
        assert_eq!(answer.ip(), ip("192.0.2.7"));
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), []),
            ClientAddress::Known(ip("127.0.0.1"))
        );
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), ["junk"]),
            ClientAddress::Known(ip("127.0.0.1"))
        );
    }
}
