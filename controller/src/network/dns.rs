//! Internal routes (`<host>.apps.internal`): the controller answers DNS for them on each instance
//! network's gateway address, so an instance finds the healthy instances of another app of its
//! space by name and calls them directly on their port 8080, never through a router.
//!
//! ```text
//!  instance ──getaddrinfo──▶ 127.0.0.11 (Docker's embedded resolver, in the container)
//!     │                        │ not a container name: forwards, from the container's namespace
//!     │                        ▼
//!     │            GATEWAY:53 of the instance's network (this server; one per network)
//!     │              ├─ <host>.apps.internal of an app of this network's space → A records of
//!     │              │   its healthy instances (TTL 0); no healthy one → no records
//!     │              ├─ any other <name>.apps.internal (unknown, or another space's) → NXDOMAIN
//!     │              └─ every other name → the host's resolvers (/etc/resolv.conf), relayed
//!     └──── http://hello.apps.internal:8080 ──▶ instance address on the same network
//! ```
//!
//! Invariants:
//! - The space is the network the query arrived on: each listener answers for one network only,
//!   from [`InternalNames`] keyed by network name, and only to sources inside that network's
//!   subnet (REFUSED otherwise, and nothing is relayed for them). The firewall opens port 53 on
//!   the gateway of each bridge to that bridge only (`runtime/firewall.rs`), so a container of
//!   another space cannot even reach another network's listener.
//! - Only healthy instances are answered: the names are built with the route table, from the
//!   instances that passed their health check (`instances::Instances::publish_routes`). TTL 0, so
//!   no resolver keeps an instance that left.
//! - Internal routes are never in the external routers' table (`instances/routing.rs`): a
//!   router answers `Host: x.apps.internal` with 404, as for any unknown host.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use pier_api::is_internal_host;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::addresses::Ipv4Net;
use super::InstanceNetwork;

/// How long a relayed query waits for the host's resolver.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP client may take to send its query.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a network whose listener could not be bound is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The internal routes' names of every network: network name → lowercase host → the addresses
/// of the app's healthy instances on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InternalNames {
    by_network: BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>>,
}

/// What a name is on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An internal route of this network's space, with its healthy instances (maybe none).
    Found(Vec<Ipv4Addr>),
    /// On `apps.internal`, but no route of this network's space.
    Unknown,
    /// Not on `apps.internal`: for the host's resolvers.
    External,
}

impl InternalNames {
    /// Adds the route `host` on `network` (an app's space's), leading to `addrs`.
    pub fn insert(&mut self, network: &str, host: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        let mut addrs: Vec<Ipv4Addr> = addrs.into_iter().collect();
        addrs.sort();
        addrs.dedup();
        self.by_network
            .entry(network.to_string())
            .or_default()
            .insert(host.to_ascii_lowercase(), addrs);
    }

    /// What `name` (any case, with or without the final dot) is for a query on `network`.
    pub fn lookup(&self, network: &str, name: &str) -> Lookup {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !is_internal_host(&name) {
            return Lookup::External;
        }
        match self.by_network.get(network).and_then(|n| n.get(&name)) {
            Some(addrs) => Lookup::Found(addrs.clone()),
            None => Lookup::Unknown,
        }
    }
}

/// The host's resolvers, as `/etc/resolv.conf` names them.
pub fn system_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|s| parse_resolv_conf(&s))
        .unwrap_or_default()
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Answers one network's queries.
pub struct Handler {
    network: String,
    subnet: Ipv4Net,
    names: watch::Receiver<Arc<InternalNames>>,
    upstream: Arc<Vec<SocketAddr>>,
}

impl Handler {
    pub fn new(
        network: &str,
        subnet: Ipv4Net,
        names: watch::Receiver<Arc<InternalNames>>,
        upstream: Arc<Vec<SocketAddr>>,
    ) -> Handler {
        Handler {
            network: network.to_string(),
            subnet,
            names,
            upstream,
        }
    }

    fn is_on_this_network(&self, src: SocketAddr) -> bool {
        match src.ip() {
            std::net::IpAddr::V4(ip) => self.subnet.contains(ip),
            std::net::IpAddr::V6(_) => false,
        }
    }
}

/// Sends `rcode` alone; the usual answer for what this server does not do.
async fn error<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    rcode: ResponseCode,
) -> ResponseInfo {
    let msg =
        MessageResponseBuilder::from_message_request(request).error_msg(request.header(), rcode);
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS answer");
            let mut h = Header::response_from_request(request.header());
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        }
    }
}

async fn send<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    header: Header,
    answers: &[Record],
    authority: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let msg = MessageResponseBuilder::from_message_request(request).build(
        header,
        answers.iter(),
        authority.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS answer");
            header.into()
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        if !self.is_on_this_network(request.src()) {
            tracing::debug!(src = %request.src(), network = %self.network, "DNS query from outside the network refused");
            return error(request, response, ResponseCode::Refused).await;
        }
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            return error(request, response, ResponseCode::NotImp).await;
        }
        let Ok(info) = request.request_info() else {
            return error(request, response, ResponseCode::FormErr).await;
        };
        let query = info.query.original().clone();
        let lookup = self
            .names
            .borrow()
            .lookup(&self.network, &query.name().to_ascii());
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        match lookup {
            Lookup::External => {
                match relay(&self.upstream, query, request.header().recursion_desired()).await {
                    Some(up) => {
                        header.set_response_code(up.response_code());
                        header.set_truncated(up.truncated());
                        let (a, n, d) = (up.answers(), up.name_servers(), up.additionals());
                        send(request, response, header, a, n, d).await
                    }
                    None => error(request, response, ResponseCode::ServFail).await,
                }
            }
            Lookup::Unknown => {
                header.set_authoritative(true);
                header.set_response_code(ResponseCode::NXDomain);
                send(request, response, header, &[], &[], &[]).await
            }
            Lookup::Found(addrs) => {
                header.set_authoritative(true);
                let records = a_records(query.name(), query.query_type(), &addrs);
                send(request, response, header, &records, &[], &[]).await
            }
        }
    }
}

/// The A records (TTL 0) a query of `qtype` gets: none for other types (the name exists, so
/// NOERROR without records).
fn a_records(name: &Name, qtype: RecordType, addrs: &[Ipv4Addr]) -> Vec<Record> {
    if !matches!(qtype, RecordType::A | RecordType::ANY) {
        return Vec::new();
    }
    addrs
        .iter()
        .map(|ip| Record::from_rdata(name.clone(), 0, RData::A(A(*ip))))
        .collect()
}

/// Asks the host's resolvers, in order, over UDP; the first answer wins.
async fn relay(upstream: &[SocketAddr], query: Query, recursion: bool) -> Option<Message> {
    let mut msg = Message::new();
    msg.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(recursion)
        .add_query(query);
    let bytes = msg.to_vec().ok()?;
    for server in upstream {
        let bind: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let asked = async {
            let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
            sock.connect(server).await.ok()?;
            sock.send(&bytes).await.ok()?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                match Message::from_vec(&buf[..n]) {
                    Ok(m) if m.id() == msg.id() && m.message_type() == MessageType::Response => {
                        return Some(m)
                    }
                    _ => continue,
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, asked).await {
            Ok(Some(m)) => return Some(m),
            _ => tracing::debug!(%server, "the host's resolver did not answer"),
        }
    }
    None
}

/// Binds one network's listener (UDP and TCP on `addr`) and starts answering.
pub async fn listen(addr: SocketAddr, handler: Handler) -> std::io::Result<ServerFuture<Handler>> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let mut server = ServerFuture::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT);
    Ok(server)
}

/// Serves every instance network's names on its gateway, port 53, following the networks as
/// spaces come and go, until `shutdown`. A network whose address cannot be bound (not root, or
/// port 53 taken) is logged and tried again every few seconds.
pub async fn serve(
    mut networks: watch::Receiver<Vec<InstanceNetwork>>,
    names: watch::Receiver<Arc<InternalNames>>,
    shutdown: CancellationToken,
) {
    let upstream = Arc::new(system_resolvers());
    let mut running: BTreeMap<String, (InstanceNetwork, ServerFuture<Handler>)> = BTreeMap::new();
    let mut warned = std::collections::BTreeSet::new();
    loop {
        let wanted = networks.borrow_and_update().clone();
        running.retain(|name, (net, server)| {
            let keep = wanted.iter().any(|w| w == net);
            if !keep {
                server.shutdown_token().cancel();
                tracing::info!(network = %name, "stopped answering internal routes");
            }
            keep
        });
        for net in &wanted {
            if running.contains_key(&net.name) {
                continue;
            }
            let addr = SocketAddr::new(net.subnet.gateway().into(), 53);
            let handler = Handler::new(&net.name, net.subnet, names.clone(), upstream.clone());
            match listen(addr, handler).await {
                Ok(server) => {
                    tracing::info!(network = %net.name, %addr, "answering internal routes (apps.internal)");
                    warned.remove(&net.name);
                    running.insert(net.name.clone(), (net.clone(), server));
                }
                Err(e) if warned.insert(net.name.clone()) => {
                    tracing::warn!(network = %net.name, %addr, error = %e, "cannot listen for internal routes' DNS; its instances resolve no apps.internal name (and no other) until it can; retrying")
                }
                Err(_) => {}
            }
        }
        let retry = wanted.len() > running.len();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = networks.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
    }
    for (_, (_, mut server)) in running {
        let _ = server.shutdown_gracefully().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "pier-c1";
    const OTHER: &str = "pier-c1-0b1c2d3e4f50";

    fn names() -> InternalNames {
        let mut n = InternalNames::default();
        n.insert(
            NET,
            "b.apps.internal",
            ["10.213.0.3".parse().unwrap(), "10.213.0.2".parse().unwrap()],
        );
        n.insert(NET, "idle.apps.internal", []);
        n.insert(
            OTHER,
            "secret.apps.internal",
            ["10.213.1.2".parse().unwrap()],
        );
        n
    }

    #[test]
    fn lookups_are_per_network_and_case_insensitive() {
        let n = names();
        let two = Lookup::Found(vec![
            "10.213.0.2".parse().unwrap(),
            "10.213.0.3".parse().unwrap(),
        ]);
        assert_eq!(n.lookup(NET, "b.apps.internal"), two);
        assert_eq!(n.lookup(NET, "B.Apps.INTERNAL."), two);
        assert_eq!(n.lookup(NET, "idle.apps.internal"), Lookup::Found(vec![]));
        assert_eq!(
            n.lookup(NET, "secret.apps.internal"),
            Lookup::Unknown,
            "another space's"
        );
        assert_eq!(n.lookup(OTHER, "b.apps.internal"), Lookup::Unknown);
        assert_eq!(n.lookup(NET, "nope.apps.internal"), Lookup::Unknown);
        assert_eq!(n.lookup("pier-gone", "b.apps.internal"), Lookup::Unknown);
        assert_eq!(n.lookup(NET, "example.com"), Lookup::External);
        assert_eq!(
            n.lookup(NET, "b.apps.internal.example.com"),
            Lookup::External
        );
    }

    /// A query of `name` for `qtype` sent to `server` over UDP or TCP, and its answer.
    async fn ask(server: SocketAddr, name: &str, qtype: RecordType, tcp: bool) -> Message {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut q = Message::new();
        q.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let bytes = q.to_vec().unwrap();
        let answer = if tcp {
            let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
            s.write_all(&(bytes.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&bytes).await.unwrap();
            let len = s.read_u16().await.unwrap();
            let mut buf = vec![0; len as usize];
            s.read_exact(&mut buf).await.unwrap();
            buf
        } else {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.send_to(&bytes, server).await.unwrap();
            let mut buf = vec![0; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            buf.truncate(n);
            buf
        };
        let m = Message::from_vec(&answer).unwrap();
        assert_eq!(m.id(), 4242);
        m
    }

    fn ips(m: &Message) -> Vec<Ipv4Addr> {
        m.answers()
            .iter()
            .map(|r| match r.data() {
                RData::A(a) => a.0,
                other => panic!("not an A record: {other:?}"),
            })
            .collect()
    }

    /// A host resolver that knows one name, and how many queries it got.
    async fn fake_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut m = Message::new();
                m.set_id(q.id())
                    .set_message_type(MessageType::Response)
                    .add_queries(q.queries().to_vec());
                let name = q.queries()[0].name().clone();
                if name.to_ascii() == "example.com." {
                    m.add_answer(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 7))));
                } else {
                    m.set_response_code(ResponseCode::NXDomain);
                }
                sock.send_to(&m.to_vec().unwrap(), from).await.unwrap();
            }
        });
        (addr, asked)
    }

    /// A server for network `NET` on loopback, answering sources in `subnet`.
    async fn server(
        subnet: &str,
        upstream: Vec<SocketAddr>,
    ) -> (
        SocketAddr,
        watch::Sender<Arc<InternalNames>>,
        ServerFuture<Handler>,
    ) {
        let (tx, rx) = watch::channel(Arc::new(names()));
        // Bind a free port for UDP and TCP alike.
        let addr = loop {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = probe.local_addr().unwrap();
            drop(probe);
            if std::net::UdpSocket::bind(addr).is_ok() {
                break addr;
            }
        };
        let handler = Handler::new(NET, subnet.parse().unwrap(), rx, Arc::new(upstream));
        let server = listen(addr, handler).await.unwrap();
        (addr, tx, server)
    }

    #[tokio::test]
    async fn answers_the_networks_names_over_udp_and_tcp() {
        let (addr, tx, mut srv) = server("127.0.0.0/8", vec![]).await;
        for tcp in [false, true] {
            let m = ask(addr, "B.APPS.internal.", RecordType::A, tcp).await;
            assert_eq!(m.response_code(), ResponseCode::NoError);
            assert!(m.authoritative());
            assert_eq!(
                ips(&m),
                [
                    "10.213.0.2".parse::<Ipv4Addr>().unwrap(),
                    "10.213.0.3".parse().unwrap()
                ]
            );
            assert!(m.answers().iter().all(|r| r.ttl() == 0), "never cached");
        }
        let aaaa = ask(addr, "b.apps.internal.", RecordType::AAAA, false).await;
        assert_eq!(
            (aaaa.response_code(), aaaa.answers().len()),
            (ResponseCode::NoError, 0)
        );
        let idle = ask(addr, "idle.apps.internal.", RecordType::A, false).await;
        assert_eq!(
            (idle.response_code(), idle.answers().len()),
            (ResponseCode::NoError, 0)
        );
        for unknown in [
            "secret.apps.internal.",
            "nope.apps.internal.",
            "apps.internal.",
        ] {
            let m = ask(addr, unknown, RecordType::A, false).await;
            assert_eq!(m.response_code(), ResponseCode::NXDomain, "{unknown}");
            assert!(m.answers().is_empty());
        }
        // A change of the names is answered at once.
        let mut n = InternalNames::default();
        n.insert(NET, "b.apps.internal", ["10.213.0.9".parse().unwrap()]);
        tx.send_replace(Arc::new(n));
        let m = ask(addr, "b.apps.internal.", RecordType::A, false).await;
        assert_eq!(ips(&m), ["10.213.0.9".parse::<Ipv4Addr>().unwrap()]);
        srv.shutdown_gracefully().await.unwrap();
    }

    #[tokio::test]
    async fn other_names_go_to_the_hosts_resolver_or_fail() {
        let (up, asked) = fake_upstream().await;
        let (addr, _tx, mut srv) = server("127.0.0.0/8", vec![up]).await;
        let m = ask(addr, "example.com.", RecordType::A, false).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(ips(&m), ["192.0.2.7".parse::<Ipv4Addr>().unwrap()]);
        let m = ask(addr, "missing.example.", RecordType::A, false).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
        srv.shutdown_gracefully().await.unwrap();
        let (addr, _tx, mut srv) = server("127.0.0.0/8", vec![]).await;
        let m = ask(addr, "example.com.", RecordType::A, false).await;
        assert_eq!(
            m.response_code(),
            ResponseCode::ServFail,
            "no resolver to ask"
        );
        srv.shutdown_gracefully().await.unwrap();
    }

    #[tokio::test]
    async fn a_source_outside_the_network_is_refused_and_nothing_relayed() {
        let (up, asked) = fake_upstream().await;
        let (addr, _tx, mut srv) = server("10.213.0.0/24", vec![up]).await;
        for name in ["b.apps.internal.", "example.com."] {
            let m = ask(addr, name, RecordType::A, false).await;
            assert_eq!(m.response_code(), ResponseCode::Refused, "{name}");
            assert!(m.answers().is_empty());
        }
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing relayed"
        );
        srv.shutdown_gracefully().await.unwrap();
    }

    #[test]
    fn reads_nameservers() {
        let conf = "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver  ::1\noptions ndots:0\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(conf),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
