//! Where a shard's messages go, decided in one place: to the shard itself through a local
//! queue (handled right after the packet or event that caused them, so with one shard the
//! output order is the input order), or to another shard through the [`Mailbox`].

use std::collections::VecDeque;

use super::mail::Mail;
use super::mailbox::Mailbox;
use crate::jobs::Outbox;
use crate::message::{ShardId, ToHome, ToOwner};

/// A shard's outgoing messages.
pub struct Router {
    id: ShardId,
    /// Messages to this shard itself, not yet handled.
    local: VecDeque<Mail>,
    /// Rings and outboxes to the other shards.
    pub mailbox: Mailbox,
    /// Shards (a bit each) sent to since the last [`Router::take_sent`].
    sent: u64,
}

impl Router {
    /// The router of shard `id`.
    pub fn new(id: ShardId, mailbox: Mailbox) -> Router {
        Router {
            id,
            local: VecDeque::new(),
            mailbox,
            sent: 0,
        }
    }

    /// Sends `mail` to shard `to`.
    pub fn send(&mut self, to: ShardId, mail: Mail) {
        if to == self.id {
            self.local.push_back(mail);
        } else {
            self.mailbox.send(to, mail);
            self.sent |= 1 << to;
        }
    }

    /// Sends a message to the owner role of shard `to`.
    pub fn send_owner(&mut self, to: ShardId, msg: ToOwner) {
        self.send(to, Mail::Owner(msg));
    }

    /// Sends a message to the home role of shard `to`.
    pub fn send_home(&mut self, to: ShardId, msg: ToHome) {
        self.send(to, Mail::Home(msg));
    }

    /// Sends everything an owner said, emptying `out`.
    pub fn send_all(&mut self, out: &mut Outbox) {
        for (to, msg) in out.drain(..) {
            self.send_home(to, msg);
        }
    }

    /// The next message this shard sent itself.
    pub fn next_local(&mut self) -> Option<Mail> {
        self.local.pop_front()
    }

    /// Whether messages to this shard itself wait.
    pub fn has_local(&self) -> bool {
        !self.local.is_empty()
    }

    /// The other shards sent to since the last call (a bit each): the ones a connection
    /// whose packet was just handled feeds.
    pub fn take_sent(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
    }
}
