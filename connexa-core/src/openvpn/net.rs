//! The host-side plumbing of an `openvpn` service: the policy-routing rule
//! and table (`ip`), the source NAT and filters (`nft`, one table per
//! service), per-interface IPv4 forwarding, the server process's pid file. Every command runs from the
//! calling thread (its network namespace).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::io::Write;

use super::{OpenvpnConfig, nft_table};
use crate::domain::NodeId;

/// Runs `program args` on this thread (its network namespace; the commands
/// are quick), feeding `stdin`; `Err` carries what it said.
pub(super) async fn run(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    let line = format!("{} {}", program.display(), args.join(" "));
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{line}`: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("`{line}`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{line}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where `program` is: itself when it has a `/`, else the first match in `PATH`.
pub(super) fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The nftables ruleset of `node`'s service, in a table of its own: SNAT of
/// `subnet`'s traffic leaving through `interface` (the node's tunnel) to
/// `local` (the PPP address); forwarding only between the tunnel and the
/// server's `device` (a client cannot reach the host's other networks, the
/// node can reach neither the host's other networks nor the clients
/// unasked); nothing from either interface to the host itself unless it
/// answers the host.
pub(super) fn nat_ruleset(
    node: NodeId,
    subnet: Ipv4Addr,
    interface: &str,
    device: &str,
    local: Ipv4Addr,
) -> String {
    let table = nft_table(node);
    format!(
        "table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet}/24 oifname \"{interface}\" counter snat to {local} comment \"connexa openvpn service {id}\"\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{device}\" oifname != \"{interface}\" drop\n\
         \t\tiifname \"{interface}\" oifname != \"{device}\" drop\n\
         \t\toifname \"{device}\" iifname != \"{interface}\" drop\n\
         \t\toifname \"{device}\" ct state {{ established, related }} accept\n\
         \t\toifname \"{device}\" drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname {{ \"{interface}\", \"{device}\" }} ct state {{ established, related }} accept\n\
         \t\tiifname {{ \"{interface}\", \"{device}\" }} drop\n\
         \t}}\n\
         }}\n",
        id = node.0
    )
}

/// Switches IPv4 forwarding on for one interface
/// (`net.ipv4.conf.<name>.forwarding`): the kernel forwards what arrives on
/// an interface whose own flag is set, so the host as a whole
/// (`net.ipv4.ip_forward`) is left as it is. The flag goes with the
/// interface.
pub(super) fn forward_on(name: &str) -> Result<(), String> {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
    std::fs::write(&path, "1")
        .map_err(|e| format!("cannot switch IPv4 forwarding on for {name} ({path}): {e}"))
}

/// Sets up routing, filtering and NAT for `node`'s service: the rule
/// `from <subnet> lookup <table>`, whose table routes everything into the
/// node's tunnel `interface` and, when the tunnel is gone, nowhere (an
/// `unreachable` default: the clients' traffic never falls through to the
/// host's own routes); the nft table of [`nat_ruleset`]; forwarding on
/// `interface` (the server's `device` gets it once the server made it).
pub(super) async fn install(
    config: &OpenvpnConfig,
    node: NodeId,
    subnet: Ipv4Addr,
    interface: &str,
    device: &str,
    local: Ipv4Addr,
) -> Result<(), String> {
    let table = config.table(node).to_string();
    let prio = config.rule_priority.to_string();
    let from = format!("{subnet}/24");
    run(
        &config.ip,
        &[
            "-4",
            "route",
            "replace",
            "unreachable",
            "default",
            "metric",
            LAST_METRIC,
            "table",
            &table,
        ],
        None,
    )
    .await?;
    run(
        &config.ip,
        &[
            "-4", "route", "replace", "default", "dev", interface, "table", &table,
        ],
        None,
    )
    .await?;
    run(
        &config.ip,
        &[
            "rule", "add", "from", &from, "lookup", &table, "priority", &prio,
        ],
        None,
    )
    .await?;
    run(
        &config.nft,
        &["-f", "-"],
        Some(&nat_ruleset(node, subnet, interface, device, local)),
    )
    .await?;
    forward_on(interface)
}

/// The metric of the `unreachable` default route: after any other.
const LAST_METRIC: &str = "4294967295";

/// Removes what [`install`] set up (and what a crashed run left): the nft
/// table, every rule pointing at the service's table, the table's routes.
/// Missing pieces are not errors; the first other failure is returned after
/// trying everything.
pub(super) async fn remove(config: &OpenvpnConfig, node: NodeId) -> Result<(), String> {
    let mut first_error = None;
    let table = config.table(node).to_string();
    let nft = nft_table(node);
    if let Err(e) = run(&config.nft, &["delete", "table", "ip", &nft], None).await
        && !e.contains("No such file")
    {
        first_error.get_or_insert(e);
    }
    // `ip rule del lookup T` removes one rule per call.
    for _ in 0..64 {
        let rules = run(&config.ip, &["-4", "rule", "show", "table", &table], None)
            .await
            .unwrap_or_default();
        if rules.trim().is_empty() {
            break;
        }
        if let Err(e) = run(&config.ip, &["-4", "rule", "del", "lookup", &table], None).await {
            first_error.get_or_insert(e);
            break;
        }
    }
    if let Err(e) = run(&config.ip, &["-4", "route", "flush", "table", &table], None).await
        && !e.contains("No such file")
        && !e.contains("FIB table does not exist")
    {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// What is installed for `node` now, one line per item (for diagnostics and
/// tests): the rules pointing at its table, its routes, its nft table.
pub(super) async fn installed(config: &OpenvpnConfig, node: NodeId) -> Vec<String> {
    let table = config.table(node).to_string();
    let mut out = Vec::new();
    for args in [
        &["-4", "rule", "show", "table", &table][..],
        &["-4", "route", "show", "table", &table][..],
    ] {
        if let Ok(text) = run(&config.ip, args, None).await {
            out.extend(
                text.lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    if run(
        &config.nft,
        &["list", "table", "ip", &nft_table(node)],
        None,
    )
    .await
    .is_ok()
    {
        out.push(format!("nft table ip {}", nft_table(node)));
    }
    out
}

/// Ends the server process of a crashed run, found by its pid file, when its
/// command line still names `conf` (a reused pid is left alone).
pub(super) async fn kill_stale(pid_file: &Path, conf: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let conf = conf.as_os_str().as_encoded_bytes();
                c.windows(conf.len()).any(|w| w == conf)
            })
            .unwrap_or(false)
    };
    if !ours(pid) {
        return;
    }
    tracing::warn!(pid, conf = %conf.display(), "ending a stale openvpn server");
    let pid_arg = pid.to_string();
    let _ = run(Path::new("kill"), &["-TERM", &pid_arg], None).await;
    for _ in 0..50 {
        if !ours(pid) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = run(Path::new("kill"), &["-KILL", &pid_arg], None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_ruleset_names_the_service() {
        let r = nat_ruleset(
            NodeId(7),
            Ipv4Addr::new(10, 201, 3, 0),
            "cx7",
            "cxv7",
            Ipv4Addr::new(10, 78, 0, 100),
        );
        assert!(r.starts_with("table ip connexa_ovpn_7 {"), "{r}");
        assert!(
            r.contains(
                "ip saddr 10.201.3.0/24 oifname \"cx7\" counter snat to 10.78.0.100 comment \"connexa openvpn service 7\""
            ),
            "{r}"
        );
        assert!(
            r.contains("iifname \"cxv7\" oifname != \"cx7\" drop"),
            "{r}"
        );
        assert!(
            r.contains("iifname \"cx7\" oifname != \"cxv7\" drop"),
            "{r}"
        );
        assert!(r.contains("iifname { \"cx7\", \"cxv7\" } drop"), "{r}");
    }

    #[test]
    fn programs_are_found_in_path_or_by_path() {
        assert!(find_program(Path::new("sh")).is_some());
        assert!(find_program(Path::new("/bin/sh")).is_some());
        assert!(find_program(Path::new("connexa-no-such-program")).is_none());
        assert!(find_program(Path::new("/nonexistent/openvpn")).is_none());
    }
}
