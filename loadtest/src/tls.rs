//! Certificates for TLS runs (`--tls`), made at start in a temporary directory: a CA, a
//! server certificate for 127.0.0.1 and a client certificate, so gearshiftd runs with
//! mutual TLS (`--ssl --ssl-ca-file`), the configuration that costs the most.

use std::path::PathBuf;
use std::sync::Arc;

/// The files of one run and the client configuration that trusts them.
pub struct Pki {
    dir: PathBuf,
    /// Flags that make gearshiftd speak mutual TLS on its port.
    pub server_args: Vec<String>,
    /// What every harness connection presents and trusts.
    pub client: Arc<rustls::ClientConfig>,
}

impl Pki {
    /// Makes the certificates.
    pub fn new() -> Result<Pki, String> {
        let e = |e: rcgen::Error| format!("certificates: {e}");
        let dir = std::env::temp_dir().join(format!("loadtest-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, text: String| -> Result<PathBuf, String> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        };
        let ca_key = rcgen::KeyPair::generate().map_err(e)?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "loadtest CA");
        let ca_pem = write("ca.pem", ca.self_signed(&ca_key).map_err(e)?.pem())?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = |name: &str, sans: Vec<String>, client: bool| {
            let key = rcgen::KeyPair::generate().map_err(e)?;
            let mut p = rcgen::CertificateParams::new(sans).map_err(e)?;
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![if client {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            }];
            let cert = p.signed_by(&key, &issuer).map_err(e)?;
            Ok::<_, String>((
                write(&format!("{name}.pem"), cert.pem())?,
                write(&format!("{name}.key"), key.serialize_pem())?,
            ))
        };
        let (server_cert, server_key) = leaf("server", vec!["127.0.0.1".into()], false)?;
        let (client_cert, client_key) = leaf("loadtest", Vec::new(), true)?;
        let client = gearshift::tls::client_config(&ca_pem, Some((&client_cert, &client_key)))?;
        Ok(Pki {
            server_args: vec![
                "--ssl".into(),
                format!("--ssl-certificate={}", server_cert.display()),
                format!("--ssl-key={}", server_key.display()),
                format!("--ssl-ca-file={}", ca_pem.display()),
            ],
            client,
            dir,
        })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
