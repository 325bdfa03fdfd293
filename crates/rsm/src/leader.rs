//! Which replica a clerk sends its next attempt to. Sans-IO: the transport reports each
//! attempt's outcome and asks where to go next.
//!
//! A clerk stays with the server that last answered; a refusal that names the leader sends
//! it there; anything else (a refusal without a hint, a lost call, an unknown outcome) moves
//! it to the next server in order. After every `n` failed attempts in a row (a whole round
//! with no one leading, as during an election) it should pause before going on.

/// The clerk's guess of the leader among `n` servers.
#[derive(Clone, Debug)]
pub struct LeaderCursor {
    n: usize,
    current: usize,
    failures: usize,
}

impl LeaderCursor {
    pub fn new(n: usize, first: usize) -> Self {
        assert!(n > 0, "a group has at least one server");
        LeaderCursor {
            n,
            current: first % n,
            failures: 0,
        }
    }

    /// The server to send to now.
    pub fn target(&self) -> usize {
        self.current
    }

    /// The current server answered.
    pub fn answered(&mut self) {
        self.failures = 0;
    }

    /// The attempt at the current server failed; `hint` is the leader it named, if any.
    /// Returns true when a whole round has failed and the clerk should pause.
    pub fn failed(&mut self, hint: Option<u64>) -> bool {
        self.failures += 1;
        self.current = match hint {
            Some(h) if (h as usize) < self.n && h as usize != self.current => h as usize,
            _ => (self.current + 1) % self.n,
        };
        self.failures.is_multiple_of(self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_hints_goes_round_otherwise_and_pauses_after_a_round() {
        let mut c = LeaderCursor::new(3, 0);
        assert!(!c.failed(Some(2)));
        assert_eq!(c.target(), 2);
        assert!(!c.failed(None));
        assert_eq!(c.target(), 0);
        assert!(
            c.failed(Some(0)),
            "a hint naming itself moves on; a round failed"
        );
        assert_eq!(c.target(), 1);
        c.answered();
        assert_eq!(c.target(), 1);
        assert!(!c.failed(Some(7)), "a hint out of range is ignored");
        assert_eq!(c.target(), 2);
    }
}
