//! The table of Gearman packet types (PROTOCOL.md §1.3): number, name and argument layout.

/// A binary packet type. The numbers are the wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum PacketType {
    CanDo = 1,
    CantDo = 2,
    ResetAbilities = 3,
    PreSleep = 4,
    Unused = 5,
    Noop = 6,
    SubmitJob = 7,
    JobCreated = 8,
    GrabJob = 9,
    NoJob = 10,
    JobAssign = 11,
    WorkStatus = 12,
    WorkComplete = 13,
    WorkFail = 14,
    GetStatus = 15,
    EchoReq = 16,
    EchoRes = 17,
    SubmitJobBg = 18,
    Error = 19,
    StatusRes = 20,
    SubmitJobHigh = 21,
    SetClientId = 22,
    CanDoTimeout = 23,
    AllYours = 24,
    WorkException = 25,
    OptionReq = 26,
    OptionRes = 27,
    WorkData = 28,
    WorkWarning = 29,
    GrabJobUniq = 30,
    JobAssignUniq = 31,
    SubmitJobHighBg = 32,
    SubmitJobLow = 33,
    SubmitJobLowBg = 34,
    SubmitJobSched = 35,
    SubmitJobEpoch = 36,
    SubmitReduceJob = 37,
    SubmitReduceJobBackground = 38,
    GrabJobAll = 39,
    JobAssignAll = 40,
    GetStatusUnique = 41,
    StatusResUnique = 42,
}

use PacketType::*;

const ALL: [PacketType; 42] = [
    CanDo,
    CantDo,
    ResetAbilities,
    PreSleep,
    Unused,
    Noop,
    SubmitJob,
    JobCreated,
    GrabJob,
    NoJob,
    JobAssign,
    WorkStatus,
    WorkComplete,
    WorkFail,
    GetStatus,
    EchoReq,
    EchoRes,
    SubmitJobBg,
    Error,
    StatusRes,
    SubmitJobHigh,
    SetClientId,
    CanDoTimeout,
    AllYours,
    WorkException,
    OptionReq,
    OptionRes,
    WorkData,
    WorkWarning,
    GrabJobUniq,
    JobAssignUniq,
    SubmitJobHighBg,
    SubmitJobLow,
    SubmitJobLowBg,
    SubmitJobSched,
    SubmitJobEpoch,
    SubmitReduceJob,
    SubmitReduceJobBackground,
    GrabJobAll,
    JobAssignAll,
    GetStatusUnique,
    StatusResUnique,
];

impl PacketType {
    /// The type for a wire number, or `None` for 0 and numbers past the table.
    pub fn from_u32(n: u32) -> Option<PacketType> {
        if n == 0 || n as usize > ALL.len() {
            return None;
        }
        Some(ALL[n as usize - 1])
    }

    /// The wire number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// How the body splits into arguments: `(leading, tail)`. `leading` arguments end in a NUL;
    /// if `tail` is true the rest of the body is one more argument (the data, or a last argument
    /// that runs to the end). This is gearmand's `argc`/`data` table turned into what a parser
    /// needs: a packet with `data` has `argc` NUL-terminated arguments, one without has `argc-1`.
    pub fn layout(self) -> (usize, bool) {
        match self {
            // argc 0: any body is read and ignored.
            ResetAbilities | PreSleep | Unused | Noop | GrabJob | NoJob | AllYours
            | GrabJobUniq | GrabJobAll => (0, false),
            CanDo | CantDo | JobCreated | WorkFail | GetStatus | SetClientId | OptionReq
            | OptionRes | GetStatusUnique => (0, true),
            EchoReq | EchoRes => (0, true),
            SubmitJob | SubmitJobBg | SubmitJobHigh | SubmitJobHighBg | SubmitJobLow
            | SubmitJobLowBg => (2, true),
            JobAssign => (2, true),
            WorkComplete | WorkException | WorkData | WorkWarning => (1, true),
            WorkStatus => (2, true),
            Error => (1, true),
            CanDoTimeout => (1, true),
            StatusRes => (4, true),
            JobAssignUniq => (3, true),
            SubmitJobSched => (7, true),
            SubmitJobEpoch => (3, true),
            SubmitReduceJob | SubmitReduceJobBackground => (4, true),
            JobAssignAll => (4, true),
            StatusResUnique => (5, true),
        }
    }

    /// Packets a server never accepts from a peer: answered with ERROR "Command not expected".
    pub fn is_server_only(self) -> bool {
        matches!(
            self,
            Unused
                | Noop
                | JobCreated
                | NoJob
                | JobAssign
                | EchoRes
                | Error
                | StatusRes
                | AllYours
                | OptionRes
                | JobAssignUniq
                | SubmitJobSched
                | JobAssignAll
                | StatusResUnique
        )
    }

    /// gearmand's upper-case name, as in its documentation and logs.
    pub fn name(self) -> &'static str {
        match self {
            CanDo => "CAN_DO",
            CantDo => "CANT_DO",
            ResetAbilities => "RESET_ABILITIES",
            PreSleep => "PRE_SLEEP",
            Unused => "UNUSED",
            Noop => "NOOP",
            SubmitJob => "SUBMIT_JOB",
            JobCreated => "JOB_CREATED",
            GrabJob => "GRAB_JOB",
            NoJob => "NO_JOB",
            JobAssign => "JOB_ASSIGN",
            WorkStatus => "WORK_STATUS",
            WorkComplete => "WORK_COMPLETE",
            WorkFail => "WORK_FAIL",
            GetStatus => "GET_STATUS",
            EchoReq => "ECHO_REQ",
            EchoRes => "ECHO_RES",
            SubmitJobBg => "SUBMIT_JOB_BG",
            Error => "ERROR",
            StatusRes => "STATUS_RES",
            SubmitJobHigh => "SUBMIT_JOB_HIGH",
            SetClientId => "SET_CLIENT_ID",
            CanDoTimeout => "CAN_DO_TIMEOUT",
            AllYours => "ALL_YOURS",
            WorkException => "WORK_EXCEPTION",
            OptionReq => "OPTION_REQ",
            OptionRes => "OPTION_RES",
            WorkData => "WORK_DATA",
            WorkWarning => "WORK_WARNING",
            GrabJobUniq => "GRAB_JOB_UNIQ",
            JobAssignUniq => "JOB_ASSIGN_UNIQ",
            SubmitJobHighBg => "SUBMIT_JOB_HIGH_BG",
            SubmitJobLow => "SUBMIT_JOB_LOW",
            SubmitJobLowBg => "SUBMIT_JOB_LOW_BG",
            SubmitJobSched => "SUBMIT_JOB_SCHED",
            SubmitJobEpoch => "SUBMIT_JOB_EPOCH",
            SubmitReduceJob => "SUBMIT_REDUCE_JOB",
            SubmitReduceJobBackground => "SUBMIT_REDUCE_JOB_BACKGROUND",
            GrabJobAll => "GRAB_JOB_ALL",
            JobAssignAll => "JOB_ASSIGN_ALL",
            GetStatusUnique => "GET_STATUS_UNIQUE",
            StatusResUnique => "STATUS_RES_UNIQUE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for n in 1..=42u32 {
            assert_eq!(PacketType::from_u32(n).unwrap().number(), n);
        }
        assert_eq!(PacketType::from_u32(0), None);
        assert_eq!(PacketType::from_u32(43), None);
    }
}
