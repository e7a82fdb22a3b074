//! The secured lab's certificates, made with the `openssl` command: a CA, a certificate for
//! 127.0.0.1 that etcd and every Patroni REST API serve (and Patroni presents as a client),
//! client certificates for pgrouter and for the lab's own requests, and a second CA with a
//! client certificate of its own that nobody trusts (for the tests of wrong certificates).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the secured lab's files are, under `<lab dir>/tls`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    pub(crate) fn new(lab_dir: &Path) -> TlsFiles {
        TlsFiles {
            dir: lab_dir.join("tls"),
        }
    }

    /// The CA every lab certificate chains to.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing the lab trusts.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// `<name>.pem` and `<name>.key`: "server" (etcd, Patroni's REST API), "patroni" (its
    /// etcd client), "pgrouter", "lab", and "rogue" (signed by the other CA).
    pub fn cert(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// Makes every file, readable by all (Patroni runs as postgres; lab keys guard nothing).
    pub(crate) fn make(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        self.ca_named("ca", "pgrouter-lab-ca")?;
        self.ca_named("other-ca", "pgrouter-lab-other-ca")?;
        self.signed("server", "ca", "/CN=127.0.0.1")?;
        self.signed("pgrouter", "ca", "/CN=pgrouter")?;
        // etcd's JSON gateway (Patroni's etcd3 client, the lab's reads) refuses a client
        // certificate with a CommonName once auth is on: these have none.
        self.signed("patroni", "ca", "/O=pgrouter-lab patroni")?;
        self.signed("lab", "ca", "/O=pgrouter-lab")?;
        self.signed("rogue", "other-ca", "/CN=pgrouter")?;
        for entry in std::fs::read_dir(&self.dir)? {
            use std::os::unix::fs::PermissionsExt;
            let path = entry?.path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    fn ca_named(&self, name: &str, cn: &str) -> Result<()> {
        let (pem, key) = self.cert(name);
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &key.to_string_lossy(),
                "-out",
                &pem.to_string_lossy(),
            ],
        )
    }

    fn signed(&self, name: &str, ca: &str, subject: &str) -> Result<()> {
        let (pem, key) = self.cert(name);
        let (ca_pem, ca_key) = self.cert(ca);
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &key.to_string_lossy(),
                "-out",
                &csr.to_string_lossy(),
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-days",
                "30",
                "-in",
                &csr.to_string_lossy(),
                "-CA",
                &ca_pem.to_string_lossy(),
                "-CAkey",
                &ca_key.to_string_lossy(),
                "-CAcreateserial",
                "-extfile",
                &ext.to_string_lossy(),
                "-out",
                &pem.to_string_lossy(),
            ],
        )
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("run openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
