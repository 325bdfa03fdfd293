//! Test models shared by the checker's test files.

use flotilla_lincheck::Model;

/// A register that can be written once: a second write is impossible whatever it answered.
/// Unlike the key/value models it can reject an operation whose answer was not seen, so an
/// operation that never returned sometimes fits nowhere and must be left out.
pub struct WriteOnce;

#[derive(Debug)]
pub enum Cmd {
    Write(u8),
    Read,
}

impl Model for WriteOnce {
    type State = Option<u8>;
    type Input = Cmd;
    type Output = Option<u8>;

    fn init(&self) -> Option<u8> {
        None
    }

    fn step(
        &self,
        state: &Option<u8>,
        input: &Cmd,
        output: Option<&Option<u8>>,
    ) -> Option<Option<u8>> {
        match input {
            Cmd::Write(value) => state.is_none().then_some(Some(*value)),
            Cmd::Read => output.is_none_or(|read| read == state).then_some(*state),
        }
    }

    fn is_read_only(&self, input: &Cmd, _output: Option<&Option<u8>>) -> bool {
        matches!(input, Cmd::Read)
    }
}
