//! TLS for the REST API: the server certificate, and client certificates
//! verified against `restapi.cafile` when it is set.

use std::sync::Arc;

/// A TLS acceptor and whether it verifies client certificates.
pub(crate) type Tls = (tokio_rustls::TlsAcceptor, bool);

/// Builds the TLS acceptor from PEM files.
pub(crate) fn tls_acceptor(
    certfile: &std::path::Path,
    keyfile: &std::path::Path,
    cafile: Option<&std::path::Path>,
) -> Result<Tls, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .map_err(|e| format!("restapi.certfile {}: {e}", certfile.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("restapi.certfile {}: {e}", certfile.display()))?;
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("restapi.keyfile {}: {e}", keyfile.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let (config, client_certs) = match cafile {
        Some(cafile) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(cafile)
                .map_err(|e| format!("restapi.cafile {}: {e}", cafile.display()))?
            {
                let cert = cert.map_err(|e| format!("restapi.cafile {}: {e}", cafile.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("restapi.cafile {}: {e}", cafile.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("restapi.cafile: {e}"))?;
            (
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(certs, key)
                    .map_err(|e| format!("restapi.certfile/keyfile: {e}"))?,
                true,
            )
        }
        None => (
            builder
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|e| format!("restapi.certfile/keyfile: {e}"))?,
            false,
        ),
    };
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        client_certs,
    ))
}
