//! Starting the lab's three-member etcd cluster and reading keys through its v3 JSON gateway.

use crate::b64;
use crate::http;
use crate::poll::wait_for;
use crate::procs;
use crate::spec::{LabSpec, ETCD_MEMBERS};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// Spawn the etcd members in `members` (logging to `<dir>/etcdN.log`) and wait until each
/// `/health` says true: a three-member cluster is healthy once two of them run.
pub(crate) fn start(spec: &LabSpec, members: &[usize], timeout: Duration) -> Result<Vec<Child>> {
    let mut children = Vec::new();
    for &i in members {
        match spawn(spec, i) {
            Ok(child) => children.push(child),
            Err(e) => {
                children.into_iter().for_each(kill);
                return Err(e);
            }
        }
    }
    for (child, &i) in children.iter_mut().zip(members) {
        if let Err(e) = wait_healthy(spec, i, child, timeout) {
            children.into_iter().for_each(kill);
            return Err(e);
        }
    }
    Ok(children)
}

fn spawn(spec: &LabSpec, index: usize) -> Result<Child> {
    let name = format!("etcd{index}");
    let log_path = spec.dir.join(format!("{name}.log"));
    // Appended to, so a restart keeps the log of the run before it.
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let peer_url = |i: usize| format!("http://127.0.0.1:{}", spec.etcd_peer_port(i));
    let initial_cluster = (0..ETCD_MEMBERS)
        .map(|i| format!("etcd{i}={}", peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    let tls = spec.tls();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{}", spec.etcd_client_port(index));
    let mut command = Command::new("etcd");
    if let Some(tls) = &tls {
        let (cert, key) = tls.cert("server");
        command
            .arg("--cert-file")
            .arg(cert)
            .arg("--key-file")
            .arg(key)
            .arg("--trusted-ca-file")
            .arg(tls.ca())
            .arg("--client-cert-auth");
    }
    let child = command
        .args(["--name", &name, "--data-dir"])
        .arg(spec.dir.join(&name))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url(index)])
        .args(["--initial-advertise-peer-urls", &peer_url(index)])
        .args(["--initial-cluster", &initial_cluster])
        .args(["--initial-cluster-token", "pgrouter-lab"])
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn etcd (is it installed in PATH?)")?;
    procs::record_pid(&spec.dir, &name, child.id())?;
    Ok(child)
}

fn wait_healthy(spec: &LabSpec, index: usize, child: &mut Child, timeout: Duration) -> Result<()> {
    let addr = format!("127.0.0.1:{}", spec.etcd_client_port(index));
    let healthy = wait_for(timeout, Duration::from_millis(100), || {
        if let Some(status) = child.try_wait()? {
            bail!("etcd{index} exited with {status}");
        }
        let tls = spec.tls();
        let to = http::Target {
            addr: &addr,
            tls: tls.as_ref(),
            token: None,
        };
        let resp = http::get(&to, "/health", HTTP_TIMEOUT)?;
        let v: Value = serde_json::from_str(&resp.body).unwrap_or_default();
        Ok((v["health"] == "true").then_some(()))
    });
    healthy.map_err(|e| {
        let log = procs::tail(&spec.dir.join(format!("etcd{index}.log")), 30);
        e.context(format!(
            "etcd{index} on {addr} did not become healthy; its log:\n{log}"
        ))
    })
}

/// SIGKILL and reap.
pub(crate) fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The value of `key` in the etcd at `addr` (`127.0.0.1:port`), `None` if absent.
pub fn get(addr: &str, key: &str) -> Result<Option<String>> {
    read(
        &http::Target {
            addr,
            tls: None,
            token: None,
        },
        key,
    )
}

/// The value of `key` through `to` (with a token where etcd wants one).
pub(crate) fn read(to: &http::Target, key: &str) -> Result<Option<String>> {
    let body = json!({ "key": b64::encode(key.as_bytes()) }).to_string();
    let resp = http::post_json(to, "/v3/kv/range", &body, HTTP_TIMEOUT)?;
    if resp.status != 200 {
        bail!("etcd range {key}: HTTP {}: {}", resp.status, resp.body);
    }
    let v: Value = serde_json::from_str(&resp.body)
        .with_context(|| format!("etcd range {key}: bad JSON {:?}", resp.body))?;
    let Some(raw) = v["kvs"][0]["value"].as_str() else {
        return Ok(None);
    };
    let bytes = b64::decode(raw).ok_or_else(|| anyhow!("etcd range {key}: bad base64 {raw:?}"))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Turns on etcd's RBAC for the secured lab through etcd0's JSON gateway: users root, patroni
/// (root role), pgrouter (read on the cluster's prefix only) and nobody (no role).
pub(crate) fn enable_auth(spec: &LabSpec) -> Result<()> {
    let tls = spec.tls();
    let addr = format!("127.0.0.1:{}", spec.etcd_client_port(0));
    let to = http::Target {
        addr: &addr,
        tls: tls.as_ref(),
        token: None,
    };
    let prefix = spec.dcs_key("");
    let end = prefix_end(prefix.as_bytes());
    let (root, patroni, pgrouter, nobody) = (
        crate::spec::ETCD_ROOT,
        crate::spec::ETCD_PATRONI,
        crate::spec::ETCD_PGROUTER,
        crate::spec::ETCD_NOBODY,
    );
    let calls = [
        (
            "/v3/auth/user/add",
            json!({"name": root.0, "password": root.1}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": root.0, "role": "root"}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": patroni.0, "password": patroni.1}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": patroni.0, "role": "root"}),
        ),
        ("/v3/auth/role/add", json!({"name": "pgrouter-read"})),
        (
            "/v3/auth/role/grant",
            json!({"name": "pgrouter-read", "perm": {"permType": "READ", "key": b64::encode(prefix.as_bytes()), "range_end": b64::encode(&end)}}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": pgrouter.0, "password": pgrouter.1}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": pgrouter.0, "role": "pgrouter-read"}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": nobody.0, "password": nobody.1}),
        ),
        ("/v3/auth/enable", json!({})),
    ];
    for (path, body) in calls {
        let resp = http::post_json(&to, path, &body.to_string(), HTTP_TIMEOUT)?;
        if resp.status != 200 {
            bail!("etcd {path} {body}: HTTP {}: {}", resp.status, resp.body);
        }
    }
    Ok(())
}

/// A token of etcd's root user, for the secured lab's own reads.
pub(crate) fn root_token(to: &http::Target) -> Result<String> {
    let (name, password) = crate::spec::ETCD_ROOT;
    let body = json!({"name": name, "password": password}).to_string();
    let resp = http::post_json(to, "/v3/auth/authenticate", &body, HTTP_TIMEOUT)?;
    let v: Value = serde_json::from_str(&resp.body).unwrap_or_default();
    match v["token"].as_str() {
        Some(t) if resp.status == 200 => Ok(t.to_owned()),
        _ => bail!(
            "etcd authenticate as root: HTTP {}: {}",
            resp.status,
            resp.body
        ),
    }
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
