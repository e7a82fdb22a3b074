//! Starting the lab's single-node etcd and reading keys through its v3 JSON gateway.

use crate::b64;
use crate::http;
use crate::poll::wait_for;
use crate::procs;
use crate::spec::LabSpec;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// Spawn etcd for `spec` (logging to `<dir>/etcd.log`) and wait until `/health` says true.
pub(crate) fn start(spec: &LabSpec, timeout: Duration) -> Result<Child> {
    let (client, peer) = (spec.base_port, spec.base_port + 1);
    let log_path = spec.dir.join("etcd.log");
    // Appended to, so a restart keeps the log of the run before it.
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new("etcd")
        .args(["--name", "lab", "--data-dir"])
        .arg(spec.dir.join("etcd"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("lab={peer_url}")])
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn etcd (is it installed in PATH?)")?;
    procs::record_pid(&spec.dir, "etcd", child.id())?;
    let addr = format!("127.0.0.1:{client}");
    let healthy = wait_for(timeout, Duration::from_millis(100), || {
        if let Some(status) = child.try_wait()? {
            bail!("etcd exited with {status}");
        }
        let resp = http::get(&addr, "/health", HTTP_TIMEOUT)?;
        let v: Value = serde_json::from_str(&resp.body).unwrap_or_default();
        Ok((v["health"] == "true").then_some(()))
    });
    if let Err(e) = healthy {
        let _ = child.kill();
        let _ = child.wait();
        let log = procs::tail(&log_path, 30);
        return Err(e.context(format!(
            "etcd on {addr} did not become healthy; etcd.log:\n{log}"
        )));
    }
    Ok(child)
}

/// The value of `key` in the etcd at `addr`, `None` if absent.
pub(crate) fn get(addr: &str, key: &str) -> Result<Option<String>> {
    let body = json!({ "key": b64::encode(key.as_bytes()) }).to_string();
    let resp = http::post_json(addr, "/v3/kv/range", &body, HTTP_TIMEOUT)?;
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
