//! The sharded store as child processes on loopback, for `flotilla cluster up --groups G`,
//! its benchmark and the tests that kill real processes: a controller cluster
//! (`flotilla shardctrler serve`) and G shard groups (`flotilla shardkv serve`, gids 100,
//! 101, ...), each of `nodes` nodes, their data under `DIR/ctrl` and `DIR/group-<gid>`.
//!
//! Every wait is bounded. Dropping a [`LocalShardedStore`] kills whatever still runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_kvraft::local::{self, LocalCluster};
use flotilla_runtime::NodeReport;
use flotilla_shardctrler::tcp::TcpCtrlClerk;
use flotilla_shardctrler::Gid;

use crate::tcp;

/// The gid of the first group.
pub const FIRST_GID: Gid = 100;

/// How long one status request may take.
const ASK: Duration = Duration::from_millis(500);

/// The processes of one sharded store.
pub struct LocalShardedStore {
    pub controller: LocalCluster,
    /// (gid, its nodes), in gid order.
    pub groups: Vec<(Gid, LocalCluster)>,
}

/// The members as `--peers`, `--ctrl` and `shard join --servers` take them.
pub fn addresses_arg(members: &[SocketAddr]) -> String {
    members
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl LocalShardedStore {
    /// Starts the controller and `groups` groups of `nodes` nodes each from the `flotilla`
    /// executable `exe`. Ports: the controller's `base_port ..`, group `k`'s
    /// `base_port + (k + 1) × nodes ..`; `base_port` 0 picks free ones. Groups join nothing
    /// yet ([`LocalShardedStore::join_all`]). At most one group per shard
    /// ([`tcp::SHARDING`]), and at least one node; `InvalidInput` otherwise, or if the ports
    /// would pass 65535.
    pub fn start(
        exe: &Path,
        dir: &Path,
        name: &str,
        nodes: usize,
        groups: usize,
        base_port: u16,
        extra: &[&str],
    ) -> std::io::Result<LocalShardedStore> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let shards = tcp::SHARDING.shards();
        if groups > shards {
            return Err(invalid(format!(
                "{groups} groups: at most {shards}, one per shard"
            )));
        }
        if nodes == 0 {
            return Err(invalid("a group of no nodes".into()));
        }
        let total = groups
            .checked_add(1)
            .and_then(|g| g.checked_mul(nodes))
            .ok_or_else(|| invalid(format!("{nodes} nodes × {groups} groups")))?;
        let all = local::loopback_addresses(total, base_port)?;
        let ctrl_members = all[..nodes].to_vec();
        let ctrl_arg = addresses_arg(&ctrl_members);
        let controller = LocalCluster::start_serving(
            exe,
            &dir.join("ctrl"),
            &format!("{name}-ctrl"),
            ctrl_members,
            &["shardctrler", "serve"],
            extra,
        )?;
        let mut started = Vec::new();
        for k in 0..groups {
            let gid = Gid::try_from(k)
                .ok()
                .and_then(|k| FIRST_GID.checked_add(k))
                .ok_or_else(|| invalid(format!("group {k} has no gid")))?;
            let members = all[(k + 1) * nodes..(k + 2) * nodes].to_vec();
            let gid_arg = gid.to_string();
            let cluster = LocalCluster::start_serving(
                exe,
                &dir.join(format!("group-{gid}")),
                &format!("{name}-{gid}"),
                members,
                &["shardkv", "serve", "--gid", &gid_arg, "--ctrl", &ctrl_arg],
                extra,
            )?;
            started.push((gid, cluster));
        }
        Ok(LocalShardedStore {
            controller,
            groups: started,
        })
    }

    pub fn controller_members(&self) -> &[SocketAddr] {
        self.controller.members()
    }

    pub fn group(&self, gid: Gid) -> Option<&LocalCluster> {
        self.groups.iter().find(|(g, _)| *g == gid).map(|(_, c)| c)
    }

    pub fn group_mut(&mut self, gid: Gid) -> Option<&mut LocalCluster> {
        self.groups
            .iter_mut()
            .find(|(g, _)| *g == gid)
            .map(|(_, c)| c)
    }

    /// Waits until the controller and every group have a leader; `Err` names the first
    /// that has none at the deadline.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let ctrl = self.controller.members().to_vec();
        wait_for(deadline, "the controller", || async {
            let mut reports = Vec::new();
            for &addr in &ctrl {
                reports.push(flotilla_shardctrler::tcp::status(addr, ASK).await.ok());
            }
            leads(reports)
        })
        .await?;
        for (gid, cluster) in &self.groups {
            let members = cluster.members().to_vec();
            wait_for(deadline, &format!("group {gid}"), || async {
                let mut reports = Vec::new();
                for &addr in &members {
                    reports.push(tcp::status(addr, ASK).await.ok().map(|s| s.node));
                }
                leads(reports)
            })
            .await?;
        }
        Ok(())
    }

    /// Joins every group in one `Join`; the configuration's number.
    pub async fn join_all(&self) -> Result<u64, String> {
        let groups: BTreeMap<Gid, Vec<String>> = self
            .groups
            .iter()
            .map(|(gid, c)| (*gid, c.members().iter().map(|a| a.to_string()).collect()))
            .collect();
        let mut admin = TcpCtrlClerk::new(
            self.controller.members().to_vec(),
            flotilla_kv::tcp::random_client_id(),
        )
        .map_err(|e| e.to_string())?;
        match admin.join(groups).await {
            Ok(Ok(num)) => Ok(num),
            Ok(Err(e)) => Err(format!("join refused: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGTERM to every node, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for (_, cluster) in &mut self.groups {
            cluster.stop(grace);
        }
        self.controller.stop(grace);
    }
}

fn leads(reports: Vec<Option<NodeReport>>) -> bool {
    reports.iter().flatten().any(|r| r.role == "Leader")
}

async fn wait_for<F, Fut>(deadline: Instant, what: &str, check: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{what} has no leader yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_groups_than_shards_or_sizes_that_overflow_are_refused_before_any_process() {
        let exe = Path::new("/nonexistent/flotilla");
        let dir = Path::new("/nonexistent/dir");
        for (nodes, groups) in [(3, 13), (3, 2000), (3, usize::MAX), (usize::MAX, 2), (0, 2)] {
            let started = LocalShardedStore::start(exe, dir, "t", nodes, groups, 7100, &[]);
            match started {
                Err(e) => assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::InvalidInput,
                    "{nodes}×{groups}: {e}"
                ),
                Ok(_) => panic!("{nodes} nodes × {groups} groups started"),
            }
        }
    }
}
