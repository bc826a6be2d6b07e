//! TLS on rustls (ring as the crypto provider; no OpenSSL at run time): the server's
//! configuration from gearmand's files, the library's client configuration, and a connection's
//! identity (the common name of its client certificate). No sockets here: the shards drive
//! their sessions without blocking (`shard/tls.rs`), the library over std sockets
//! (`client/connection.rs`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every configuration uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate (PEM) in the {what} {}",
            path.display()
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "cannot read a private key (PEM) from {}: {e}",
            path.display()
        )
    })
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "CA file")? {
        roots
            .add(cert)
            .map_err(|e| format!("a certificate of the CA file {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The server's TLS configuration: its certificate chain and key, and with a CA file, client
/// certificates required and verified against it (mutual TLS). TLS 1.2 and 1.3.
pub fn server_config(
    certificate: &Path,
    key: &Path,
    ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("the CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certificates(certificate, "certificate")?, private_key(key)?)
        .map_err(|e| {
            format!(
                "the certificate {} with the key {}: {e}",
                certificate.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// A client's TLS configuration: the CA certificates the server's certificate must be signed
/// by, and optionally the client's own certificate and key (for mutual TLS).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert, "certificate")?, private_key(key)?)
            .map_err(|e| {
                format!(
                    "the certificate {} with the key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: the host of `host:port`
/// (an address in brackets for IPv6).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// The common name (the last one, as Python gear takes it) in the subject of a DER
/// certificate. Only called on certificates the verifier accepted; anything unexpected in
/// the encoding gives None (no identity), never a panic.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (cert, _) = der::expect(cert, der::SEQUENCE)?;
    let (mut tbs, _) = der::expect(cert, der::SEQUENCE)?;
    // tbsCertificate: [0] version (optional), serialNumber, signature, issuer, validity,
    // subject.
    let (tag, _, rest) = der::next(tbs)?;
    if tag == der::VERSION {
        tbs = rest;
    }
    for _ in 0..4 {
        tbs = der::next(tbs)?.2;
    }
    let (mut names, _) = der::expect(tbs, der::SEQUENCE)?;
    let mut found = None;
    while !names.is_empty() {
        let (mut rdn, rest) = der::expect(names, der::SET)?;
        names = rest;
        while !rdn.is_empty() {
            let (attribute, rest) = der::expect(rdn, der::SEQUENCE)?;
            rdn = rest;
            let (oid, value) = der::expect(attribute, der::OID)?;
            if oid == der::COMMON_NAME {
                let (tag, text, _) = der::next(value)?;
                found = Some(der::string(tag, text)?);
            }
        }
    }
    found
}

/// Just enough DER to find a name in a certificate.
mod der {
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const OID: u8 = 0x06;
    pub const VERSION: u8 = 0xa0;
    /// 2.5.4.3, id-at-commonName.
    pub const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    /// The first element: (tag, contents, what follows).
    pub fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers are not used in certificates
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    /// The first element, which must have `tag`: (contents, what follows).
    pub fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        match next(input)? {
            (t, contents, rest) if t == tag => Some((contents, rest)),
            _ => None,
        }
    }

    /// A DirectoryString as text.
    pub fn string(tag: u8, bytes: &[u8]) -> Option<String> {
        match tag {
            // UTF8String, PrintableString, IA5String
            0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
            // TeletexString: Latin-1 in practice
            0x14 => Some(bytes.iter().map(|&b| b as char).collect()),
            // BMPString: UTF-16 big-endian
            0x1e if bytes.len().is_multiple_of(2) => String::from_utf16(
                &bytes
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>(),
            )
            .ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_found_in_the_subject() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Example");
        dn.push(rcgen::DnType::CommonName, "zuul-executor");
        dn.push(rcgen::DnType::CountryName, "NL");
        assert_eq!(
            common_name(&cert_with(dn)).as_deref(),
            Some("zuul-executor")
        );
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::PrintableString("printable".try_into().unwrap()),
        );
        assert_eq!(common_name(&cert_with(dn)).as_deref(), Some("printable"));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "no name");
        assert_eq!(common_name(&cert_with(dn)), None);
    }

    #[test]
    fn broken_encodings_give_no_name() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "x");
        let good = cert_with(dn);
        for cut in 0..good.len() {
            // Never a panic; a cut certificate is refused by its outer length.
            assert_eq!(common_name(&good[..cut]), None);
        }
        assert_eq!(common_name(&[0x1f, 0, 0]), None);
        assert_eq!(common_name(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }

    #[test]
    fn server_names_come_from_the_address() {
        assert_eq!(
            server_name("localhost:4730").unwrap(),
            ServerName::try_from("localhost").unwrap()
        );
        assert!(matches!(
            server_name("127.0.0.1:4730").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:4730").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("bad host:1").is_err());
    }
}
