//! A real 3-member etcd cluster on loopback ports in a temp directory, for the fleet tests. Members
//! can be killed and restarted (same data directory) to take quorum away and give it back; all are
//! killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the `etcd` binary is installed (`scripts/test.sh` installs `etcd-server`).
pub fn available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits (bounded) until the cluster answers.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            members,
            initial,
        };
        for i in 0..n {
            cluster.restart(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// The comma-separated client endpoints (`--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        let data = self.data_dir(i);
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &self.initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "kms-sidecar-test",
                // Fast elections keep the no-quorum/recovery test short.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// Waits until a linearizable read succeeds through `etcdctl`-free means: a PUT through the
    /// v3 HTTP gateway of any member.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            for m in &self.members {
                if m.child.is_none() {
                    continue;
                }
                let ok = Command::new("curl")
                    .args([
                        "-sf",
                        "-m",
                        "1",
                        &format!("http://127.0.0.1:{}/health", m.client),
                    ])
                    .output()
                    .is_ok_and(|o| {
                        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("true")
                    });
                if ok {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd cluster not healthy within {limit:?}");
    }
}

impl EtcdCluster {
    /// POSTs `body` (JSON) to `/v3/<path>` of etcd's HTTP gateway on the first running member
    /// (no etcdctl needed) and returns the answer; panics when etcd refuses.
    pub fn gateway(&self, path: &str, body: &str, token: Option<&str>) -> String {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running member");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "5", "-X", "POST", "-d", body]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: {t}")]);
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{}/v3/{path}", m.client))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && !text.contains("\"error\""),
            "etcd {path}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Turns on etcd's authentication with a `root` user holding `password` (the root role).
    pub fn enable_auth(&self, password: &str) {
        self.gateway("auth/role/add", r#"{"name":"root"}"#, None);
        self.gateway(
            "auth/user/add",
            &format!(r#"{{"name":"root","password":"{password}"}}"#),
            None,
        );
        self.gateway("auth/user/grant", r#"{"user":"root","role":"root"}"#, None);
        self.gateway("auth/enable", "{}", None);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
