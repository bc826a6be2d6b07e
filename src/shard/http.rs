//! Connections to the HTTP port (`-r http`, `--http-port`): gearmand's HTTP protocol module.
//!
//! An HTTP connection is a `Conn` like any other, with `http: Some(HttpState)`. Its one
//! request (parsed by `protocol::http`) becomes the same `Submit` a SUBMIT_JOB* packet makes,
//! sent to the function's owner; the owner's answers come back as the usual binary packets
//! (JOB_CREATED, then the forwarded WORK_*), which this module turns into the HTTP reply
//! instead of writing them. As gearmand 1.1.20, every reply is HTTP/1.0 and the connection
//! closes after it: one request per connection, bytes after it are not read as a request.

use super::Home;
use super::OwnerRole;
use super::conn::Closing;
use crate::jobs::{self, Priority};
use crate::message::{Submit, ToOwner};
use crate::protocol::http::{self, Method, Parsed, Refusal};
use crate::protocol::{HEADER_LEN, PacketType};

/// Where an HTTP connection's one request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request.
    Reading,
    /// Submitted; waiting for the job's end (or, in the background, its handle).
    Waiting,
    /// Answered (or refused): whatever else arrives is ignored until the close.
    Done,
}

/// The state of a connection to the HTTP port.
#[derive(Debug)]
pub struct HttpState {
    phase: Phase,
    /// The request was HEAD: headers only.
    head: bool,
    background: bool,
    /// WORK_DATA received so far; the reply's body starts with it.
    body: Vec<u8>,
}

impl HttpState {
    /// A connection that has sent nothing yet.
    pub fn new() -> HttpState {
        HttpState {
            phase: Phase::Reading,
            head: false,
            background: false,
            body: Vec::new(),
        }
    }
}

impl Default for HttpState {
    fn default() -> Self {
        Self::new()
    }
}

impl Home {
    /// Reads the request at the start of `buf` (the input of HTTP connection `key`); returns
    /// the bytes used. An incomplete request stays buffered; with its head in, the whole
    /// request's length is the connection's `partial_need`, so a large body is read into its
    /// own buffer against the input budget, as a large packet is.
    pub(super) fn http_input(&mut self, owner: &mut OwnerRole, key: usize, buf: &[u8]) -> usize {
        let conn = &mut self.conns[key];
        let reading = conn
            .http
            .as_ref()
            .is_some_and(|h| h.phase == Phase::Reading);
        if conn.closing != Closing::No || !reading {
            return buf.len();
        }
        match http::parse(buf, self.config.max_packet) {
            Ok(Parsed::Incomplete { need }) => {
                conn.partial_need = need.unwrap_or(0);
                0
            }
            Ok(Parsed::Request(request, _)) => {
                conn.partial_need = 0;
                self.http_request(key, request);
                self.drain_local(owner);
                buf.len()
            }
            Err(refusal) => {
                log::info!(
                    "HTTP connection {} ({}): {} {}",
                    conn.fd,
                    conn.ip,
                    refusal.status().0,
                    refusal.status().1
                );
                self.http_refuse(key, refusal);
                buf.len()
            }
        }
    }

    /// Answers with a refusal and closes.
    fn http_refuse(&mut self, key: usize, refusal: Refusal) {
        let mut b = Vec::new();
        http::refusal(&mut b, refusal, &self.config.version);
        self.http_finish(key, &b);
    }

    /// Writes the reply and closes after it.
    fn http_finish(&mut self, key: usize, reply: &[u8]) {
        if let Some(h) = self.conns[key].http.as_mut() {
            h.phase = Phase::Done;
            h.body = Vec::new();
        }
        self.emit(key, reply);
        self.close_after_flush(key);
    }

    fn http_request(&mut self, key: usize, r: http::Request<'_>) {
        let version = &self.config.version;
        let mut b = Vec::new();
        match r.method {
            Method::Trace => {
                http::trace_reply(&mut b, r.head, version);
                return self.http_finish(key, &b);
            }
            Method::Head if r.function.is_empty() => {
                http::empty_reply(&mut b, version);
                return self.http_finish(key, &b);
            }
            _ => {}
        }
        if self.config.acl.is_some() {
            // The ACL grants by certificate identity, which the HTTP port never has.
            let conn = &self.conns[key];
            log::info!(
                "HTTP connection {} ({}): invoke of {:?} refused by the ACL",
                conn.fd,
                conn.ip,
                String::from_utf8_lossy(r.function)
            );
            let version = &self.config.version;
            b.extend_from_slice(
                format!(
                    "HTTP/1.0 403 Forbidden\r\nServer: Gearman/{version}\r\n\
                     Content-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            );
            return self.http_finish(key, &b);
        }
        if r.unique.len() > jobs::MAX_UNIQUE {
            let (code, text) = (b"ARGUMENT_TOO_LARGE", b"Unique value too large");
            http::error_reply(&mut b, (400, "Bad Request"), code, text, version);
            return self.http_finish(key, &b);
        }
        let priority = match r.priority {
            http::Priority::High => Priority::High,
            http::Priority::Normal => Priority::Normal,
            http::Priority::Low => Priority::Low,
        };
        let owner = self.owner_of(r.function);
        let seq = if r.background && self.config.owner.durable {
            self.conns[key].out.reserve()
        } else {
            self.seq_for(key, owner)
        };
        let conn = &mut self.conns[key];
        if let Some(h) = conn.http.as_mut() {
            h.phase = Phase::Waiting;
            h.head = r.method == Method::Head;
            h.background = r.background;
        }
        let submit = Submit {
            client: conn.id,
            seq,
            exceptions: conn.exceptions,
            function: r.function.into(),
            job: jobs::JobBytes::new(r.unique, &[], r.body),
            priority,
            background: r.background,
            when: 0,
        };
        self.router
            .send_owner(owner, ToOwner::Submit(Box::new(submit)));
    }

    /// Turns the packets an owner sent HTTP connection `key` (the answer to its submission,
    /// or a forwarded WORK_*) into what is written: the HTTP reply once the wait is over,
    /// nothing before. The connection closes after the reply.
    pub(super) fn http_packets(&mut self, key: usize, bytes: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        let mut rest = bytes;
        while rest.len() >= HEADER_LEN {
            let ty = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            let len = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
            let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
                break;
            };
            rest = &rest[HEADER_LEN + len..];
            let Some(ty) = PacketType::from_u32(ty) else {
                continue;
            };
            self.http_packet(key, ty, body, &mut reply);
        }
        if !reply.is_empty() {
            if let Some(h) = self.conns[key].http.as_mut() {
                h.phase = Phase::Done;
                h.body = Vec::new();
            }
            self.conns[key].closing = Closing::AfterFlush;
        }
        reply
    }

    fn http_packet(&mut self, key: usize, ty: PacketType, body: &[u8], reply: &mut Vec<u8>) {
        let version = &self.config.version;
        let Some(h) = self.conns[key].http.as_mut() else {
            return;
        };
        if h.phase != Phase::Waiting {
            return;
        }
        let mut split = body.splitn(2, |&b| b == 0);
        let handle = split.next().unwrap_or_default();
        let data = split.next().unwrap_or_default();
        match ty {
            PacketType::JobCreated if h.background => {
                http::job_reply(reply, body, "JOB_CREATED", b"", h.head, version)
            }
            PacketType::Error => {
                let status = (503, "Service Unavailable");
                http::error_reply(reply, status, handle, data, version)
            }
            PacketType::WorkData => h.body.extend_from_slice(data),
            PacketType::WorkComplete | PacketType::WorkException => {
                h.body.extend_from_slice(data);
                http::job_reply(reply, handle, ty.name(), &h.body, h.head, version);
            }
            PacketType::WorkFail => http::job_reply(reply, handle, ty.name(), b"", h.head, version),
            // JOB_CREATED of a foreground job, WORK_STATUS, WORK_WARNING: the wait goes on.
            _ => {}
        }
    }
}
