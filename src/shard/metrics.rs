//! Connections to the metrics port (`--metrics-port`): one `GET /metrics` per connection,
//! answered with every shard's figures in the Prometheus text format.
//!
//! The request is read like any input (from the shard's read buffer; an incomplete one waits
//! in the connection, at most [`MAX_REQUEST`] bytes). It becomes a gather, as the `status`
//! listing is: every shard's owner role (`Query::Metrics`) and home role
//! (`ToHome::HomeMetrics`) answers with a snapshot of its counters, and once all parts are in,
//! the home renders them (`crate::metrics::render`) as one HTTP reply and closes. The job path
//! pays nothing for this but the plain counter increments.

use super::Home;
use super::OwnerRole;
use super::conn::Closing;
use crate::message::{Part, Query, ToHome, ToOwner};
use crate::metrics::{self, Role};
use std::time::Instant;

/// Longest request head accepted (request line and headers); a longer one is refused with
/// 431. A scrape's request is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

/// What a metrics request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics` (any query string), and whether it was HTTP/1.0.
    Metrics { http10: bool },
    /// Anything else, answered with this status and closed.
    Refused(u16, &'static str),
}

/// Parses the request at the start of `buf`; `None` while its head is incomplete.
fn parse(buf: &[u8]) -> Option<Request> {
    // The first blank line ends the head (bare line feeds too, as hand-typed requests have).
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let Some(end) = end else {
        return (buf.len() > MAX_REQUEST)
            .then_some(Request::Refused(431, "Request Header Fields Too Large"));
    };
    if end > MAX_REQUEST {
        return Some(Request::Refused(431, "Request Header Fields Too Large"));
    }
    let line = buf[..end].split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Some(Request::Refused(400, "Bad Request"));
    };
    if !version.starts_with(b"HTTP/1.") {
        return Some(Request::Refused(400, "Bad Request"));
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path != b"/metrics" {
        return Some(Request::Refused(404, "Not Found"));
    }
    if method != b"GET" {
        return Some(Request::Refused(405, "Method Not Allowed"));
    }
    Some(Request::Metrics {
        http10: version == b"HTTP/1.0",
    })
}

impl Home {
    /// Reads the request at the start of `buf` (metrics connection `key`'s input); returns
    /// the bytes used (none while the request is incomplete: it stays buffered).
    pub(super) fn metrics_input(&mut self, owner: &mut OwnerRole, key: usize, buf: &[u8]) -> usize {
        let conn = &mut self.conns[key];
        if conn.closing != Closing::No || conn.metrics != Some(false) {
            return buf.len();
        }
        let Some(request) = parse(buf) else {
            return 0;
        };
        conn.metrics = Some(true);
        match request {
            Request::Metrics { http10 } => {
                let id = conn.id;
                self.scrapes_waiting.push_back((id, http10));
                self.start_waiting_scrape(owner);
            }
            Request::Refused(code, text) => {
                log::info!(
                    "metrics connection {} ({}): {code} {text}",
                    conn.fd,
                    conn.ip
                );
                let reply = format!(
                    "HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close{}\r\n\r\n{text}\n",
                    text.len() + 1,
                    if code == 405 { "\r\nAllow: GET" } else { "" }
                );
                self.emit(key, reply.as_bytes());
                self.close_after_flush(key);
            }
        }
        buf.len()
    }

    /// Closes the metrics connections open past `--metrics-timeout` (a request never
    /// finished, or a reply not read): each holds a slot of `--metrics-max-connections` and
    /// perhaps a whole reply.
    pub(super) fn expire_metrics(&mut self) {
        let now = Instant::now();
        while let Some(id) = super::pop_due(&mut self.metrics_deadlines, now) {
            let Some(key) = self.conn_key(id) else {
                continue;
            };
            let conn = &mut self.conns[key];
            if conn.closing != Closing::Now {
                log::info!(
                    "closing metrics connection {} ({}): open longer than --metrics-timeout {:?}",
                    conn.fd,
                    conn.ip,
                    self.config.metrics_timeout
                );
                conn.closing = Closing::Now;
                self.closing.push(key);
            }
        }
    }

    /// When the next waiting scrape may start (None: none waits).
    pub(super) fn next_scrape_turn(&self) -> Option<Instant> {
        if self.scrapes_waiting.is_empty() {
            return None;
        }
        Some(self.router.mailbox.peers().control.scrape_turns.next())
    }

    /// Starts the oldest waiting scrape if it is the server's turn to scrape
    /// (`--metrics-min-interval` since the last scrape on any shard). A scrape walks every
    /// function on every shard, so a peer that keeps asking must not make the shards do that
    /// more often than the interval allows; it waits (within `--metrics-timeout`) instead of
    /// being refused, so two scrapers both get fresh figures.
    pub(super) fn start_waiting_scrape(&mut self, owner: &mut OwnerRole) {
        while let Some(&(id, _)) = self.scrapes_waiting.front() {
            if self
                .conn_key(id)
                .is_some_and(|key| self.conns[key].closing == Closing::No)
            {
                break;
            }
            self.scrapes_waiting.pop_front();
        }
        let Some(&(id, http10)) = self.scrapes_waiting.front() else {
            return;
        };
        let peers = self.router.mailbox.peers().clone();
        if !peers
            .control
            .scrape_turns
            .take(self.config.metrics_min_interval)
        {
            return;
        }
        self.scrapes_waiting.pop_front();
        if let Some(key) = self.conn_key(id) {
            self.gather_metrics(key, http10);
            self.drain_local(owner);
        }
    }

    /// Asks every shard's owner and home role for its figures.
    fn gather_metrics(&mut self, key: usize, http10: bool) {
        let seq = self.conns[key].out.reserve();
        let conn = self.conns[key].id;
        let shards = self.config.shards as usize;
        let gather = self.gathers.insert(super::Gather {
            conn,
            seq,
            kind: super::admin::GatherKind::Metrics { http10 },
            parts: Vec::with_capacity(2 * shards),
            remaining: 2 * shards,
        }) as u32;
        let max_functions = self.config.metrics_max_functions;
        for shard in 0..self.config.shards {
            self.router.send_owner(
                shard,
                ToOwner::Ask {
                    client: conn,
                    gather,
                    query: Query::Metrics { max_functions },
                },
            );
            self.router.send_home(
                shard,
                ToHome::HomeMetrics {
                    client: conn,
                    gather,
                },
            );
        }
    }

    /// This home's part of a scrape.
    pub(super) fn metrics_snapshot(&self) -> metrics::HomeSnapshot {
        let mut connections = [0u64; 4];
        for (_, c) in self.conns.iter() {
            let role = if c.metrics.is_some() {
                Role::Metrics
            } else if c.http.is_some() {
                Role::Http
            } else if !c.abilities.is_empty() {
                Role::Worker
            } else {
                Role::Client
            };
            connections[role as usize] += 1;
        }
        let (ring_messages, ring_occupancy) = self.router.mailbox.ring_fill();
        metrics::HomeSnapshot {
            shard: self.id,
            counters: self.stats.clone(),
            connections,
            ring_messages,
            ring_occupancy,
            outbox_messages: self.router.mailbox.pending() as u64,
        }
    }

    /// The HTTP reply to a scrape, from every shard's parts.
    pub(super) fn metrics_reply(&self, http10: bool, parts: Vec<Part>) -> Vec<u8> {
        let mut owners = Vec::new();
        let mut homes = Vec::new();
        for p in parts {
            match p {
                Part::OwnerMetrics(o) => owners.push(*o),
                Part::HomeMetrics(h) => homes.push(*h),
                _ => {}
            }
        }
        homes.sort_by_key(|h| h.shard);
        let store = self.store_state.as_ref().map(|s| metrics::StoreView {
            counters: &s.metrics,
            healthy: s.healthy.load(std::sync::atomic::Ordering::Relaxed),
        });
        let body = metrics::render(metrics::Scrape {
            owners,
            homes,
            store,
            max_functions: self.config.metrics_max_functions as usize,
            version: &self.config.version,
        });
        let mut out = format!(
            "HTTP/1.{} 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            if http10 { 0 } else { 1 },
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: no panic; an incomplete head is within the limit; an answer is final
        /// (more bytes never change it), so reading the request in pieces changes nothing.
        #[test]
        fn parsing_is_bounded_and_final(
            head in prop::sample::select(vec![
                &b"GET /metrics HTTP/1.1\r\n"[..], b"GET /x HTTP/1.0\r\n", b"PUT /metrics HTTP/1.1\r\n",
                b"GET /metrics HTTP/2\r\n", b"", b"\r\n\r\n",
            ]),
            body in prop::collection::vec(any::<u8>(), 0..300),
            more in prop::collection::vec(any::<u8>(), 0..50),
            pad in 0..2 * MAX_REQUEST,
        ) {
            let mut buf = head.to_vec();
            buf.extend(std::iter::repeat_n(b'a', pad));
            buf.extend_from_slice(&body);
            let first = parse(&buf);
            if first.is_none() {
                prop_assert!(buf.len() <= MAX_REQUEST);
            }
            buf.extend_from_slice(&more);
            if let Some(answer) = first {
                prop_assert_eq!(parse(&buf), Some(answer));
            }
        }
    }

    #[test]
    fn requests() {
        let get = |s: &str| parse(s.as_bytes());
        assert_eq!(get("GET /metrics HTTP/1.1\r\nHost: x"), None);
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics { http10: false })
        );
        assert_eq!(
            get("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Request::Metrics { http10: true })
        );
        assert_eq!(
            get("GET / HTTP/1.1\r\n\r\n"),
            Some(Request::Refused(404, "Not Found"))
        );
        assert_eq!(
            get("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Request::Refused(405, "Method Not Allowed"))
        );
        assert_eq!(
            get("GET /metrics\r\n\r\n"),
            Some(Request::Refused(400, "Bad Request"))
        );
        assert_eq!(
            get("GET /metrics SPDY/3\r\n\r\n"),
            Some(Request::Refused(400, "Bad Request"))
        );
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert_eq!(
            get(&long),
            Some(Request::Refused(431, "Request Header Fields Too Large"))
        );
    }
}
