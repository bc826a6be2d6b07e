//! The vocabulary shards speak to each other, and to themselves (with one shard, or when a
//! connection's home shard also owns the function, a message is handled in the same loop turn
//! without touching a ring). A leaf: it depends on nothing else in the crate, so the owner
//! rules (`jobs`) and the event loop (`shard`) both speak it without depending on each other
//! (it uses only `metrics`' snapshot types, themselves a leaf).
//!
//! Messages are typed by direction: [`ToOwner`] goes from a connection's home to a function's
//! (or job's) owner, [`ToHome`] from an owner, or from another home answering an admin listing,
//! to a connection's home. Moving connections between shards is the event loop's own business
//! (`shard::Mail`).
//!
//! Rule: every message is either delivered or hands its responsibility back. A home shard that
//! receives a reply for a connection that has gone (stale generation) drops it; the owner has
//! already been told, or will be told, by the `WorkerGone`/`ClientGone` the home sent when the
//! connection closed, which arrives after every earlier message from that home (rings are FIFO).
//! A reply that would attach a client that is gone is handed back as a `ClientGone`.

/// Index of a shard thread.
pub type ShardId = u16;

/// A connection anywhere in the server: its home shard, its slab slot, and the slot's generation
/// (bumped when the slot is freed, so a late message never reaches a newer connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The home shard.
    pub shard: ShardId,
    /// Slot in the home shard's connection slab.
    pub slot: u32,
    /// Generation of that slot.
    pub generation: u32,
}

/// Position of a reply in a connection's ordered output (see `Conn::reserve`). `DIRECT` means
/// "nothing was outstanding when asked and the answer comes back in the same turn": write it.
pub type Seq = u64;
/// See [`Seq`].
pub const DIRECT: Seq = u64::MAX;

/// Job priority; the numbers are gearmand's queue indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Priority {
    /// HIGH
    High = 0,
    /// NORMAL
    Normal = 1,
    /// LOW
    Low = 2,
}

/// Longest unique id accepted (PROTOCOL.md §1.1).
pub const MAX_UNIQUE: usize = 64;

/// A job's unique id, reducer and payload, packed into one exact-size allocation on their
/// way to the owner, which copies them into a slot of its blob store (or, if long, keeps the
/// allocation).
pub struct JobBytes {
    bytes: Box<[u8]>,
    unique_len: u8,
    reducer_len: u8,
}

impl JobBytes {
    /// The packed bytes and the lengths of the unique id and reducer at their start.
    pub fn into_parts(self) -> (Box<[u8]>, u8, u8) {
        (self.bytes, self.unique_len, self.reducer_len)
    }

    /// Packs the three; `unique` and `reducer` are at most [`MAX_UNIQUE`] bytes.
    pub fn new(unique: &[u8], reducer: &[u8], data: &[u8]) -> JobBytes {
        debug_assert!(unique.len() <= MAX_UNIQUE && reducer.len() <= MAX_UNIQUE);
        let mut v = Vec::with_capacity(unique.len() + reducer.len() + data.len());
        v.extend_from_slice(unique);
        v.extend_from_slice(reducer);
        v.extend_from_slice(data);
        JobBytes {
            bytes: v.into(),
            unique_len: unique.len() as u8,
            reducer_len: reducer.len() as u8,
        }
    }

    /// The unique id as submitted.
    pub fn unique(&self) -> &[u8] {
        &self.bytes[..self.unique_len as usize]
    }

    /// The reducer (SUBMIT_REDUCE_JOB*), empty otherwise.
    pub fn reducer(&self) -> &[u8] {
        let u = self.unique_len as usize;
        &self.bytes[u..u + self.reducer_len as usize]
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.unique_len as usize + self.reducer_len as usize..]
    }
}

impl std::fmt::Debug for JobBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBytes")
            .field("unique", &String::from_utf8_lossy(self.unique()))
            .field("reducer", &String::from_utf8_lossy(self.reducer()))
            .field("data_len", &self.data().len())
            .finish()
    }
}

/// Which GRAB_JOB variant asked, deciding the assignment packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrabKind {
    /// GRAB_JOB → JOB_ASSIGN
    Plain,
    /// GRAB_JOB_UNIQ → JOB_ASSIGN_UNIQ
    Uniq,
    /// GRAB_JOB_ALL → JOB_ASSIGN_ALL (JOB_ASSIGN_UNIQ when the job has no reducer)
    All,
}

/// A SUBMIT_* request, copied out of the read buffer.
#[derive(Debug)]
pub struct Submit {
    /// The submitting connection.
    pub client: ConnId,
    /// Where the JOB_CREATED (or ERROR) goes in its output.
    pub seq: Seq,
    /// Whether this connection wants WORK_EXCEPTION forwarded as is.
    pub exceptions: bool,
    /// Function name.
    pub function: Box<[u8]>,
    /// Unique id, reducer (SUBMIT_REDUCE_JOB*, else empty) and payload, packed once; both
    /// ids were checked against [`MAX_UNIQUE`] by the home shard.
    pub job: JobBytes,
    /// Priority.
    pub priority: Priority,
    /// Background: no client waits.
    pub background: bool,
    /// SUBMIT_JOB_EPOCH's run time (unix seconds), 0 for "now".
    pub when: i64,
}

/// Result packets a worker sends about a job it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkKind {
    /// WORK_DATA
    Data,
    /// WORK_WARNING
    Warning,
    /// WORK_STATUS
    Status,
    /// WORK_COMPLETE (ends the job)
    Complete,
    /// WORK_FAIL (ends the job)
    Fail,
    /// WORK_EXCEPTION (ends the job)
    Exception,
}

impl WorkKind {
    /// Whether the job ends with this packet.
    pub fn ends_job(self) -> bool {
        matches!(
            self,
            WorkKind::Complete | WorkKind::Fail | WorkKind::Exception
        )
    }
}

/// Admin questions that every owner answers for its part (`workers`, about connections, is
/// asked of homes: [`ToHome::ListConnections`]).
#[derive(Clone, Debug)]
pub enum Query {
    /// `status` and `prioritystatus`: the functions this shard owns.
    Functions,
    /// `show jobs`
    Jobs,
    /// `show unique jobs`
    Uniques,
    /// `drop function` (matched case-insensitively, so every owner looks)
    DropFunction(Box<[u8]>),
    /// GET_STATUS_UNIQUE
    StatusUnique(Box<[u8]>),
    /// A scrape of the metrics port: this owner's figures, with at most `max_functions`
    /// functions of its own (the rest summed).
    Metrics {
        /// `--metrics-max-functions`.
        max_functions: u32,
    },
    /// ECHO_REQ with several shards: answered once every shard has handled everything the
    /// asking home sent it before (rings are FIFO), so an echo round trip means "all my
    /// earlier packets took effect", as it does with one event loop.
    Barrier,
}

/// One line of `status`/`prioritystatus`, with what is needed to sort it as gearmand does.
#[derive(Clone, Debug)]
pub struct FunctionRow {
    /// Function name.
    pub name: Box<[u8]>,
    /// When the function record was made (a process-wide clock), newest first within a bucket.
    pub created: u64,
    /// All jobs, queued or running.
    pub total: u32,
    /// Running jobs.
    pub running: u32,
    /// Queued (not running) jobs per priority.
    pub queued: [u32; 3],
    /// Worker entries (duplicates count).
    pub workers: u32,
}

/// One line of `workers`.
#[derive(Clone, Debug)]
pub struct ConnectionRow {
    /// File descriptor.
    pub fd: i32,
    /// Peer address.
    pub ip: String,
    /// SET_CLIENT_ID, or `-`.
    pub client_id: Box<[u8]>,
    /// Registered functions, newest first, duplicates included.
    pub functions: Vec<Box<[u8]>>,
}

/// One job in `show jobs` / `show unique jobs`.
#[derive(Clone, Debug)]
pub struct JobRow {
    /// Handle number (the part after the prefix).
    pub number: u64,
    /// Retries so far.
    pub retries: u8,
    /// Whether the job is abandoned (gearmand's `ignore_job`).
    pub ignore: bool,
    /// gearmand's `job_queued`: 1 for background jobs.
    pub background: bool,
    /// The unique as stored.
    pub unique: Box<[u8]>,
    /// Bucket key for `show unique jobs` (PROTOCOL.md §2.3).
    pub unique_key: u32,
}

/// A shard's answer to a [`Query`].
#[derive(Clone, Debug)]
pub enum Part {
    /// For `Query::Functions`.
    Functions(Vec<FunctionRow>),
    /// For `Query::Connections`.
    Connections(Vec<ConnectionRow>),
    /// For `Query::Jobs` and `Query::Uniques`.
    Jobs(Vec<JobRow>),
    /// For `Query::DropFunction`: `None` if not found here, else the reply line.
    Dropped(Option<&'static str>),
    /// For `Query::StatusUnique`: running, numerator, denominator, waiting clients.
    StatusUnique(Option<(bool, u32, u32, u32)>),
    /// For `Query::Barrier`.
    Barrier,
    /// For `Query::Metrics`: an owner's figures.
    OwnerMetrics(Box<crate::metrics::OwnerSnapshot>),
    /// For [`ToHome::HomeMetrics`]: a home's figures.
    HomeMetrics(Box<crate::metrics::HomeSnapshot>),
}

/// What a connection's home asks of an owner: the owner of a function (hash of its name) or of
/// a job (its handle number modulo the shards).
#[derive(Debug)]
pub enum ToOwner {
    /// SUBMIT_* (boxed: it is the largest message).
    Submit(Box<Submit>),
    /// CAN_DO / CAN_DO_TIMEOUT: one more worker entry for a function.
    CanDo {
        /// The worker.
        worker: ConnId,
        /// Function.
        function: Box<[u8]>,
        /// Milliseconds, 0 for none.
        timeout_ms: u32,
    },
    /// CANT_DO: drop every entry of the function and requeue its jobs held by the worker.
    CantDo {
        /// The worker.
        worker: ConnId,
        /// Function.
        function: Box<[u8]>,
    },
    /// RESET_ABILITIES, or the worker went away: drop every entry and requeue what it holds.
    WorkerGone {
        /// The worker.
        worker: ConnId,
    },
    /// GRAB_JOB*: ask this owner for the best job; `rest` are the owners still to ask.
    Grab {
        /// The worker.
        worker: ConnId,
        /// Where the answer goes.
        seq: Seq,
        /// Which packet to answer with.
        kind: GrabKind,
        /// Owners to ask next if this one has nothing.
        rest: smallvec::SmallVec<[ShardId; 4]>,
    },
    /// PRE_SLEEP: the worker sleeps; NOOP it now if this owner has work for it.
    Sleep {
        /// The worker.
        worker: ConnId,
    },
    /// The worker was assigned a job by another owner: its CAN_DO_TIMEOUT timer for job
    /// `number` here (gearmand has one per connection) is gone.
    DropTimer {
        /// The worker.
        worker: ConnId,
        /// The job the timer guarded.
        number: u64,
    },
    /// The home did not send a NOOP (the worker was awake): wake someone else instead.
    NoopDeclined {
        /// The worker.
        worker: ConnId,
    },
    /// WORK_* from a worker for a job it holds; `packet` is the whole packet re-encoded with
    /// the response magic, ready to forward byte for byte.
    Work {
        /// The worker.
        worker: ConnId,
        /// Handle number.
        number: u64,
        /// Which result.
        kind: WorkKind,
        /// The packet to forward.
        packet: Box<[u8]>,
    },
    /// GET_STATUS for a handle this shard owns.
    GetStatus {
        /// The asker.
        client: ConnId,
        /// Where the answer goes.
        seq: Seq,
        /// Handle number.
        number: u64,
        /// The handle as sent, echoed in the reply.
        handle: Box<[u8]>,
    },
    /// A client closed: detach it from these foreground jobs.
    ClientGone {
        /// The client.
        client: ConnId,
        /// Handle numbers it waited on at this owner.
        jobs: Vec<u64>,
    },
    /// `cancel job`
    Cancel {
        /// The admin connection.
        client: ConnId,
        /// Where the answer goes.
        seq: Seq,
        /// Handle number.
        number: u64,
    },
    /// `create function` / `maxqueue` (`None`: just create).
    Function {
        /// The admin connection.
        client: ConnId,
        /// Where the answer goes.
        seq: Seq,
        /// Function.
        function: Box<[u8]>,
        /// New limits, if any.
        maxqueue: Option<[u32; 3]>,
    },
    /// A scatter-gather admin question.
    Ask {
        /// The asker.
        client: ConnId,
        /// The asker's gather slot.
        gather: u32,
        /// The question.
        query: Query,
    },
}

/// What an owner (or, for a listing of connections, another home) sends a connection's home.
#[derive(Debug)]
pub enum ToHome {
    /// An answer in the connection's ordered output.
    Reply {
        /// Recipient.
        to: ConnId,
        /// Its place in the output.
        seq: Seq,
        /// The encoded packet(s).
        bytes: Box<[u8]>,
        /// A foreground job the client now waits on.
        attach: Option<u64>,
    },
    /// A job for a worker.
    Assign {
        /// Recipient.
        to: ConnId,
        /// Its place in the output.
        seq: Seq,
        /// Handle number.
        number: u64,
        /// JOB_ASSIGN*.
        bytes: Box<[u8]>,
    },
    /// The owner had nothing for this grab.
    Empty {
        /// The worker.
        to: ConnId,
        /// Its place in the output.
        seq: Seq,
        /// Which packet it asked with.
        kind: GrabKind,
        /// Owners still to ask.
        rest: smallvec::SmallVec<[ShardId; 4]>,
    },
    /// A result for a waiting client, or an ERROR about a worker's late result.
    Forward {
        /// Recipient.
        to: ConnId,
        /// The encoded packet.
        bytes: Box<[u8]>,
        /// The job this ends for the client, if it ends.
        ends: Option<u64>,
    },
    /// Wake this worker with NOOP if it sleeps.
    Noop {
        /// The worker.
        to: ConnId,
        /// The owner that wants it awake (told if the worker was not asleep).
        from: ShardId,
    },
    /// The worker no longer holds this job (CAN_DO_TIMEOUT expired).
    Revoked {
        /// The worker.
        to: ConnId,
        /// Handle number.
        number: u64,
    },
    /// A shard's part of a gathered answer.
    Answer {
        /// The asker.
        to: ConnId,
        /// The asker's gather slot.
        gather: u32,
        /// This shard's part.
        part: Part,
    },

    /// A scrape of the metrics port: this home's figures.
    HomeMetrics {
        /// The asker.
        client: ConnId,
        /// The asker's gather slot.
        gather: u32,
    },

    /// `workers`: this home's part of the listing of connections.
    ListConnections {
        /// The asker.
        client: ConnId,
        /// The asker's gather slot.
        gather: u32,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_stay_small() {
        assert!(
            std::mem::size_of::<super::ToOwner>() <= 72,
            "{}",
            std::mem::size_of::<super::ToOwner>()
        );
        assert!(
            std::mem::size_of::<super::ToHome>() <= 72,
            "{}",
            std::mem::size_of::<super::ToHome>()
        );
    }
}
