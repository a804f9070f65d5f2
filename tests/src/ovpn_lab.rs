//! The pieces of the `openvpn` lab tests and benchmark: a client network
//! namespace joined to the lab's, a real `openvpn` client in it, commands run
//! in a namespace, the lab file fetched through the VPN.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use connexa_core::domain::{NodeId, ServiceEndpoint};
use connexa_core::openvpn;

use crate::lab::Lab;

/// What an openvpn client's log says once it is connected.
pub const UP: &str = "Initialization Sequence Completed";

/// `CMD ARGS...` in namespace `ns`, on a blocking thread (the service's
/// packet pump runs on this runtime).
pub async fn in_ns(ns: &str, cmd: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
    args.extend(cmd.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || Command::new("ip").args(&args).output())
        .await
        .expect("command thread")
        .expect("run ip netns exec")
}

pub async fn ok_in(ns: &str, cmd: &[&str]) -> String {
    let out = in_ns(ns, cmd).await;
    assert!(
        out.status.success(),
        "{} failed ({}): {}{}",
        cmd.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab file's URL at the server's PPP address.
pub fn file_via_ppp(lab: &Lab) -> String {
    let path = lab
        .file_url
        .splitn(4, '/')
        .nth(3)
        .expect("a path in CONNEXA_LAB_FILE_URL");
    format!("http://{}/{path}", lab.ppp_server)
}

/// The client's namespace, joined to the lab's by a veth pair; removed on
/// drop, the lab's end of the pair first: deleting the namespace alone
/// removes that end only when the kernel gets round to destroying the
/// namespace, and the next lab test would find it still there.
pub struct ClientNs {
    /// The namespace's name.
    pub name: String,
    lab_ns: String,
    veth: String,
}

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.lab_ns, "link", "del", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub const SERVER_SIDE: &str = "10.250.77.1";

/// Client namespace number `idx` (0: the one at 10.250.77.2), joined to
/// the lab's namespace by the veth pair `vcxovpn<2 idx>`/`vcxovpn<2 idx + 1>`
/// on `10.250.77.<4 idx>/30`; its default route goes to the lab's namespace.
pub async fn client_ns(lab: &Lab, idx: u8) -> ClientNs {
    let name = format!("cxovpn-c{}-{idx}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    let (a, b) = (
        format!("vcxovpn{}", 2 * idx),
        format!("vcxovpn{}", 2 * idx + 1),
    );
    let ns = ClientNs {
        name: name.clone(),
        lab_ns: lab.netns.clone(),
        veth: a.clone(),
    };
    let status = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    let _ = in_ns(&lab.netns, &["ip", "link", "del", &a]).await;
    ok_in(
        &lab.netns,
        &[
            "ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &name,
        ],
    )
    .await;
    let gateway = format!("10.250.77.{}", 4 * idx + 1);
    let server = format!("{gateway}/30");
    let client = format!("10.250.77.{}/30", 4 * idx + 2);
    ok_in(&lab.netns, &["ip", "addr", "add", &server, "dev", &a]).await;
    ok_in(&lab.netns, &["ip", "link", "set", &a, "up"]).await;
    ok_in(&name, &["ip", "addr", "add", &client, "dev", &b]).await;
    ok_in(&name, &["ip", "link", "set", &b, "up"]).await;
    ok_in(&name, &["ip", "link", "set", "lo", "up"]).await;
    ok_in(&name, &["ip", "route", "add", "default", "via", &gateway]).await;
    ns
}

/// A running openvpn client in the client namespace; killed on drop.
pub struct Client {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client(ns: &ClientNs, profile: &Path, log: &Path) -> Client {
    let _ = std::fs::remove_file(log);
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "openvpn", "--config"])
        .arg(profile)
        .arg("--log")
        .arg(log)
        .spawn()
        .expect("run the openvpn client");
    Client {
        child,
        log: log.to_path_buf(),
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (at most `limit`) until `file` contains one of `needles`; returns it.
pub async fn wait_for(file: &Path, needles: &[&str], limit: Duration) -> Option<String> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let text = read(file);
        if let Some(n) = needles.iter().find(|n| text.contains(**n)) {
            return Some(n.to_string());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The profile of `ep` (CA from `ca_dir`) written to `path`.
pub fn write_profile(ca_dir: &Path, path: PathBuf, node: NodeId, ep: &ServiceEndpoint) -> PathBuf {
    let ca = openvpn::ca_certificate(ca_dir).expect("the CA");
    let text = openvpn::profile(node, ep, &ca).expect("a profile");
    std::fs::write(&path, text).unwrap();
    path
}

/// Fetches the lab file from the client namespace (through the VPN) and
/// checks its length and sha256.
pub async fn fetch_through_vpn(lab: &Lab, ns: &ClientNs) {
    let url = file_via_ppp(lab);
    let out = in_ns(&ns.name, &["curl", "-sS", "--max-time", "120", &url]).await;
    assert!(
        out.status.success(),
        "curl {url} from the client namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len() as u64, lab.file_size);
    assert_eq!(crate::socks_kit::sha256_hex(&out.stdout), lab.file_sha256);
}
