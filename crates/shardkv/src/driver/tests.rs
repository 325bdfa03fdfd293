use std::cell::RefCell;
use std::time::Duration;

use flotilla_kv::KvServer;

use super::*;

/// Links whose group calls answer `answer` (after `barrier`, when there is one) and whose
/// proposals are recorded and answered `outcome`.
struct Mock {
    work: Work,
    answer: Replied<GroupAnswer>,
    outcome: Option<GroupAnswer>,
    barrier: Option<tokio::sync::Barrier>,
    proposed: RefCell<Vec<GroupCommand>>,
}

impl Mock {
    fn new(work: Work, answer: Replied<GroupAnswer>, outcome: Option<GroupAnswer>) -> Self {
        Mock {
            work,
            answer,
            outcome,
            barrier: None,
            proposed: RefCell::new(Vec::new()),
        }
    }
}

impl Links for Mock {
    fn leads(&self) -> bool {
        true
    }
    fn work(&self) -> Work {
        self.work.clone()
    }
    async fn propose(&self, command: GroupCommand) -> Option<GroupAnswer> {
        self.proposed.borrow_mut().push(command);
        self.outcome.clone()
    }
    async fn query(&self, _num: u64) -> Option<Config> {
        None
    }
    async fn call_group(
        &self,
        _servers: &[String],
        _request: GroupRequest,
    ) -> Option<Replied<GroupAnswer>> {
        if let Some(barrier) = &self.barrier {
            barrier.wait().await;
        }
        Some(self.answer.clone())
    }
}

fn fetching(shards: &[usize]) -> Work {
    Work {
        num: 3,
        fetch: shards
            .iter()
            .map(|&s| (s, 100, vec!["a:1".to_string()]))
            .collect(),
        ..Work::default()
    }
}

fn a_shard() -> Replied<GroupAnswer> {
    Replied::Done(GroupAnswer::Shard(KvServer::new().snapshot()))
}

#[tokio::test]
async fn only_an_install_that_took_effect_is_progress() {
    for (outcome, progress) in [
        (Some(GroupAnswer::Done), true),
        (Some(GroupAnswer::Refused), false),
        (Some(GroupAnswer::NotReady), false),
        (None, false),
    ] {
        let links = Mock::new(fetching(&[4]), a_shard(), outcome.clone());
        assert_eq!(
            round(&links).await,
            progress,
            "install answered {outcome:?}"
        );
        assert!(matches!(
            links.proposed.borrow().as_slice(),
            [GroupCommand::Install {
                num: 3,
                shard: 4,
                ..
            }]
        ));
    }
}

#[tokio::test]
async fn a_fetched_shard_that_does_not_restore_is_not_proposed() {
    let garbage = Replied::Done(GroupAnswer::Shard(b"not a shard's state".to_vec()));
    let links = Mock::new(fetching(&[4]), garbage, Some(GroupAnswer::Refused));
    assert!(!round(&links).await);
    assert!(
        links.proposed.borrow().is_empty(),
        "{:?}",
        links.proposed.borrow()
    );
}

#[tokio::test]
async fn a_rounds_shards_are_fetched_and_told_at_once() {
    // Each call waits until all three are in flight: one at a time, none would finish.
    let mut work = fetching(&[1, 5]);
    work.tell.push((7, 101, vec!["b:1".to_string()]));
    let mut links = Mock::new(work, a_shard(), Some(GroupAnswer::Done));
    links.barrier = Some(tokio::sync::Barrier::new(3));
    let done = tokio::time::timeout(Duration::from_secs(10), round(&links)).await;
    assert_eq!(done, Ok(true), "the round's calls did not run at once");
    // Answered `Shard` to the Delete too, so only the two installs are proposed.
    assert_eq!(links.proposed.borrow().len(), 2);
}

#[tokio::test]
async fn join_all_keeps_the_order() {
    let outputs = join_all(
        (0..5u64)
            .map(|i| async move {
                tokio::time::sleep(Duration::from_millis(10 * (5 - i))).await;
                i
            })
            .collect(),
    )
    .await;
    assert_eq!(outputs, [0, 1, 2, 3, 4]);
}
