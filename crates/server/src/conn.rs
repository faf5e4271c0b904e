//! Connection management: how long a connection may take or sit idle, and how many there may
//! be in total and per client address.
//!
//! A connection costs the server a file descriptor and a task whether or not it ever sends a
//! request; without bounds, clients that complete TLS and go silent, or idle HTTP/2
//! connections, pile up until the process runs out of file descriptors and stops answering
//! everyone (the red team held 300 silent connections open past 60 s, and 20,000 from one
//! address starved `/health`). So:
//!
//! * every phase has a deadline: the TLS handshake, the first request (which also bounds
//!   HTTP/1-or-2 protocol detection), each HTTP/1 request's headers, and idleness — a
//!   connection with no request in flight for [`ConnectionOptions::idle_timeout`] is closed,
//!   HTTP/1 keep-alive and HTTP/2 alike; HTTP/2 peers are also PINGed and dropped when they
//!   stop answering;
//! * connections are counted per client address (an IPv6 /64 is one address) and in total;
//!   past either cap a new connection is closed right after `accept`, counted in
//!   [`ConnectionStats`] and reported as a `connection-flood` security event — at most once a
//!   minute per address and [`MAX_FLOOD_REPORTS_PER_MINUTE`] a minute in all, so a flood
//!   cannot turn into a flood of database writes.
//!
//! Nothing here is per-vehicle state: the counts are of this instance's open sockets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// At most this many `connection-flood` reports a minute, whatever the number of addresses.
pub const MAX_FLOOD_REPORTS_PER_MINUTE: usize = 30;
/// File descriptors kept free of connections for the database, key files and the public
/// folder when [`ConnectionOptions::max_connections`] is capped by the open-files limit.
pub const RESERVED_FILE_DESCRIPTORS: u64 = 128;
/// How long an idle connection that was asked to close may take to do so before it is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Timeouts and caps of the server's connections (`[server]` in `rampart.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Longest from the connection's start (after TLS) to the first request's headers.
    pub first_request_timeout: Duration,
    /// Longest an HTTP/1 client may take to send one request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A connection whose requests in flight make no progress for this long (the client
    /// stopped sending or reading) is cut.
    pub stall_timeout: Duration,
    /// Interval of HTTP/2 keep-alive PINGs (`None`: no PINGs).
    pub h2_keep_alive_interval: Option<Duration>,
    /// An HTTP/2 connection whose PING is not answered within this is closed.
    pub h2_keep_alive_timeout: Duration,
    /// Most open connections in total.
    pub max_connections: usize,
    /// Most open connections per client address.
    pub max_connections_per_ip: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
            first_request_timeout: Duration::from_secs(10),
            header_read_timeout: crate::tls::HEADER_READ_TIMEOUT,
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            h2_keep_alive_interval: Some(Duration::from_secs(30)),
            h2_keep_alive_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// Counters of the connection layer, for `/metrics` (per process).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted and served (TLS or not) since start.
    pub accepted: AtomicU64,
    /// Connections closed at once because a cap was reached.
    pub refused: AtomicU64,
    /// Connections closed for idleness or for never sending a request.
    pub idle_closed: AtomicU64,
    /// `accept` failures (e.g. out of file descriptors), each followed by a pause.
    pub accept_errors: AtomicU64,
    /// Connections cut because their requests made no progress (the client stopped sending
    /// or reading).
    pub stalled: AtomicU64,
}

/// Called (from the accept loop, so it must not block) when a refused connection is to be
/// reported; `rampart serve` records a `connection-flood` security event.
pub type FloodReporter = Arc<dyn Fn(Flood) + Send + Sync>;

/// Called (from a connection's task, so it must not block) when a TLS handshake is refused
/// because of the client's certificate (one the fleet CA did not sign, an expired one, …),
/// with the peer and why; `rampart serve` records a `client-certificate-refused` event.
pub type HandshakeReporter = Arc<dyn Fn(std::net::SocketAddr, String) + Send + Sync>;

/// How the connection layer of one server is set up: options, counters, and who is told of
/// floods.
#[derive(Clone)]
pub struct Connections {
    /// Timeouts and caps.
    pub options: ConnectionOptions,
    /// Counters (shared with `/metrics`).
    pub stats: Arc<ConnectionStats>,
    /// Who records floods (none: only logged).
    pub on_flood: Option<FloodReporter>,
    /// Who records client certificates refused in the TLS handshake (none: only logged).
    pub on_certificate_refused: Option<HandshakeReporter>,
}

impl Connections {
    /// `options`, fresh counters, floods only logged.
    pub fn new(options: ConnectionOptions) -> Self {
        Connections {
            options,
            stats: Arc::new(ConnectionStats::default()),
            on_flood: None,
            on_certificate_refused: None,
        }
    }
}

impl Default for Connections {
    fn default() -> Self {
        Connections::new(ConnectionOptions::default())
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("options", &self.options)
            .field("stats", &self.stats)
            .field("on_flood", &self.on_flood.is_some())
            .finish()
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client address has [`ConnectionOptions::max_connections_per_ip`] open.
    PerAddress,
    /// The server has [`ConnectionOptions::max_connections`] open.
    Total,
}

/// A flood to report: connections from `address` refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    /// The client address (for IPv6 the /64 it belongs to).
    pub address: IpAddr,
    /// The cap that was hit.
    pub refusal: Refusal,
    /// The cap's value.
    pub cap: usize,
    /// Connections from this address refused since its last report (this one included).
    pub refused: u64,
}

impl Flood {
    /// Human-readable detail for the security event.
    pub fn detail(&self) -> String {
        let which = match self.refusal {
            Refusal::PerAddress => "connections per address",
            Refusal::Total => "connections in total",
        };
        format!(
            "{} connection(s) from {} refused: at the cap of {} {which}",
            self.refused, self.address, self.cap
        )
    }
}

/// The key connections are counted under: the address, an IPv4-mapped IPv6 address as IPv4,
/// and other IPv6 addresses by their /64 (one subscriber's prefix).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// Open connections per address and in total.
pub(crate) struct Table {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_address: usize,
    stats: Arc<ConnectionStats>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with open connections: at most `max_total` entries.
    per_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
pub(crate) struct Slot {
    table: Arc<Table>,
    key: IpAddr,
}

impl Table {
    pub(crate) fn new(options: &ConnectionOptions, stats: Arc<ConnectionStats>) -> Arc<Self> {
        Arc::new(Table {
            counts: Mutex::new(Counts::default()),
            max_total: options.max_connections,
            max_per_address: options.max_connections_per_ip,
            stats,
        })
    }

    /// Admits a connection from `ip`, or says which cap it would exceed.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = address_key(ip);
        // A poisoned lock only means a panic elsewhere while counting: the counts are still
        // whole numbers, keep using them.
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let open = counts.per_address.entry(key).or_insert(0);
        if *open >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        *open += 1;
        counts.total += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            table: self.clone(),
            key,
        })
    }

    /// The cap behind `refusal`.
    pub(crate) fn cap(&self, refusal: Refusal) -> usize {
        match refusal {
            Refusal::PerAddress => self.max_per_address,
            Refusal::Total => self.max_total,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .table
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(open) = counts.per_address.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.per_address.remove(&self.key);
            }
        }
        self.table.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decides which refusals are reported: once a minute per address, at most
/// [`MAX_FLOOD_REPORTS_PER_MINUTE`] a minute in all.
pub(crate) struct FloodReports {
    state: Mutex<FloodState>,
}

struct FloodState {
    /// Per address: when it was last reported, refusals since.
    per_address: HashMap<IpAddr, (Option<Instant>, u64)>,
    window_start: Instant,
    in_window: usize,
}

/// Entries kept before old ones are pruned.
const MAX_FLOOD_ENTRIES: usize = 10_000;
const MINUTE: Duration = Duration::from_secs(60);

impl FloodReports {
    pub(crate) fn new() -> Self {
        FloodReports {
            state: Mutex::new(FloodState {
                per_address: HashMap::new(),
                window_start: Instant::now(),
                in_window: 0,
            }),
        }
    }

    /// Notes a refusal from `ip`; returns what to report, if it is time to.
    pub(crate) fn note(&self, ip: IpAddr, refusal: Refusal, cap: usize) -> Option<Flood> {
        let now = Instant::now();
        let address = address_key(ip);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.duration_since(state.window_start) >= MINUTE {
            state.window_start = now;
            state.in_window = 0;
        }
        if state.per_address.len() >= MAX_FLOOD_ENTRIES {
            state
                .per_address
                .retain(|_, (last, _)| last.is_some_and(|t| now.duration_since(t) < MINUTE));
        }
        let budget_left = state.in_window < MAX_FLOOD_REPORTS_PER_MINUTE;
        let entry = state.per_address.entry(address).or_insert((None, 0));
        entry.1 = entry.1.saturating_add(1);
        let due = entry.0.is_none_or(|t| now.duration_since(t) >= MINUTE);
        if !(due && budget_left) {
            return None;
        }
        let refused = entry.1;
        *entry = (Some(now), 0);
        state.in_window += 1;
        Some(Flood {
            address,
            refusal,
            cap,
            refused,
        })
    }
}

/// What a connection is doing: requests in flight, whether it has served any, and when that
/// last changed — enough to tell when it has been idle too long; and when a request in
/// flight last made progress — enough to tell when the client stopped sending or reading.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    served: AtomicU64,
    last_change: Mutex<Instant>,
    last_progress: Mutex<Instant>,
    changed: Notify,
}

/// A request in flight; dropped once its response has been sent (or abandoned).
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    responding: bool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_change: Mutex::new(Instant::now()),
            last_progress: Mutex::new(Instant::now()),
            changed: Notify::new(),
        })
    }

    fn touch(&self) {
        *self
            .last_change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// A request starts.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.progress();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
        self.touch();
        self.changed.notify_waiters();
        InFlight {
            activity: self.clone(),
            responding: false,
        }
    }

    fn progress(&self) {
        *self
            .last_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// Notes progress of a request in flight (a frame of its body arrived).
    pub(crate) fn request_progress(&self) {
        self.progress();
    }

    /// Completes once requests are in flight but the connection made no progress for
    /// `stall`: no request arrived, no frame of a request body came in, no response started
    /// and none was asked for more of its body (the client stopped sending or reading).
    pub(crate) async fn stalled(&self, stall: Duration) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                changed.await;
                continue;
            }
            let since = self
                .last_progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed();
            match stall.checked_sub(since).filter(|d| !d.is_zero()) {
                None => return,
                Some(left) => tokio::time::sleep(left).await,
            }
        }
    }

    /// Completes once the connection has had no request in flight for `first_request` (if
    /// it never had one) or `idle` (after its last one).
    pub(crate) async fn idle(&self, first_request: Duration, idle: Duration) {
        loop {
            let mut changed = pin!(self.changed.notified());
            // Registered before the state is read, so a change in between is not missed.
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            let limit = if self.served.load(Ordering::SeqCst) == 0 {
                first_request
            } else {
                idle
            };
            let since = self
                .last_change
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed();
            let Some(left) = limit.checked_sub(since).filter(|d| !d.is_zero()) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep(left) => {}
                () = changed => {}
            }
        }
    }
}

impl crate::linger::ResponseWatch for InFlight {
    fn started(&mut self) {
        if !self.responding {
            self.responding = true;
            self.activity.progress();
        }
    }

    fn progressed(&self) {
        self.activity.progress();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.activity.touch();
        self.activity.changed.notify_waiters();
    }
}

/// Caps `max_connections` below the process's open-files limit (less
/// [`RESERVED_FILE_DESCRIPTORS`]), so the caps refuse connections before `accept` starts to
/// fail for everyone.
pub fn cap_to_open_files_limit(options: &mut ConnectionOptions) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let Some(current) = limit.current else {
        return;
    };
    let room = usize::try_from(current.saturating_sub(RESERVED_FILE_DESCRIPTORS))
        .unwrap_or(usize::MAX)
        .max(1);
    if options.max_connections > room {
        tracing::warn!(
            configured = options.max_connections,
            open_files_limit = current,
            capped = room,
            "max_connections is above what the open-files limit allows; capped"
        );
        options.max_connections = room;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn table_caps_per_address_and_in_total_and_frees_on_drop() {
        let options = ConnectionOptions {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..ConnectionOptions::default()
        };
        let stats = Arc::new(ConnectionStats::default());
        let table = Table::new(&options, stats.clone());
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let a = table.admit(one).unwrap();
        let _b = table.admit(one).unwrap();
        assert_eq!(table.admit(one).err(), Some(Refusal::PerAddress));
        let _c = table.admit(two).unwrap();
        assert_eq!(table.admit(two).err(), Some(Refusal::Total));
        assert_eq!(stats.open.load(Ordering::Relaxed), 3);
        drop(a);
        assert_eq!(stats.open.load(Ordering::Relaxed), 2);
        assert!(table.admit(one).is_ok());
    }

    #[test]
    fn floods_are_reported_once_a_minute_per_address_with_a_global_budget() {
        let reports = FloodReports::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = reports.note(ip, Refusal::PerAddress, 4).unwrap();
        assert_eq!(first.refused, 1);
        for _ in 0..1000 {
            assert_eq!(reports.note(ip, Refusal::PerAddress, 4), None);
        }
        let mut reported = 1;
        for i in 0..200u8 {
            let other = IpAddr::from([198, 51, 100, i]);
            if reports.note(other, Refusal::Total, 10).is_some() {
                reported += 1;
            }
        }
        assert_eq!(reported, MAX_FLOOD_REPORTS_PER_MINUTE);
    }

    #[tokio::test]
    async fn activity_is_idle_after_the_first_request_or_idle_timeout() {
        let ms = Duration::from_millis;
        let activity = Activity::new();
        let started = Instant::now();
        activity.idle(ms(200), ms(60_000)).await;
        assert!(started.elapsed() >= ms(200));
        let request = activity.start();
        let idle = activity.idle(ms(200), ms(300));
        tokio::pin!(idle);
        // In flight: never idle, however long.
        assert!(tokio::time::timeout(ms(600), idle.as_mut()).await.is_err());
        let done_at = Instant::now();
        drop(request);
        idle.await;
        assert!(done_at.elapsed() >= ms(300));
    }

    #[tokio::test]
    async fn activity_stalls_only_with_a_request_in_flight_and_no_progress() {
        let ms = Duration::from_millis;
        let activity = Activity::new();
        assert!(
            tokio::time::timeout(ms(400), activity.stalled(ms(100)))
                .await
                .is_err(),
            "nothing in flight: no stall"
        );
        let request = activity.start();
        let started = Instant::now();
        activity.stalled(ms(200)).await;
        assert!(started.elapsed() >= ms(200));
        // Progress keeps postponing it.
        activity.request_progress();
        let stalled = activity.stalled(ms(300));
        tokio::pin!(stalled);
        for _ in 0..4 {
            assert!(tokio::time::timeout(ms(150), stalled.as_mut())
                .await
                .is_err());
            activity.request_progress();
        }
        drop(request);
    }
}
