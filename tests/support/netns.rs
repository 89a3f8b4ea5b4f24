//! Network namespaces the tests make (and remove by name, even after a crashed earlier run).

use std::path::Path;
use std::process::{Command, Stdio};

/// A network namespace with a veth pair to the host: host side `<prefix>.1` (device `<veth>0`), namespace
/// side `<prefix>.2` (device `<veth>1`), loopback up; removed on drop.
pub struct NetNs {
    /// The namespace's name under `/var/run/netns`.
    pub name: String,
    /// The first three octets of both veth addresses.
    pub prefix: String,
    veth: String,
}

impl NetNs {
    /// Creates the namespace and its veth pair; `veth` names the pair's devices, unique per test.
    pub fn create(name: &str, prefix: &str, veth: &str) -> Self {
        let ip = |args: &str| {
            let status = Command::new("ip")
                .args(args.split_whitespace())
                .status()
                .expect("ip (iproute2) is installed");
            assert!(status.success(), "ip {args}");
        };
        remove(name, veth);
        ip(&format!("netns add {name}"));
        let netns = NetNs {
            name: name.into(),
            prefix: prefix.into(),
            veth: veth.into(),
        };
        ip(&format!("link add {veth}0 type veth peer name {veth}1"));
        ip(&format!("link set {veth}1 netns {name}"));
        ip(&format!("addr add {prefix}.1/24 dev {veth}0"));
        ip(&format!("link set {veth}0 up"));
        ip(&format!(
            "netns exec {name} ip addr add {prefix}.2/24 dev {veth}1"
        ));
        ip(&format!("netns exec {name} ip link set {veth}1 up"));
        ip(&format!("netns exec {name} ip link set lo up"));
        assert!(Path::new(&netns.path()).exists());
        netns
    }

    /// `/var/run/netns/<name>`, as a spec names it.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

/// Removes a veth and namespace if they exist.
fn remove(name: &str, veth: &str) {
    let veth = format!("{veth}0");
    for args in [vec!["link", "del", &veth], vec!["netns", "del", name]] {
        let _ = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        remove(&self.name, &self.veth);
    }
}
