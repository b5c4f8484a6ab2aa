package export

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrTLS is wrapped by every error of LoadTLS.
var ErrTLS = errors.New("export: bad TLS configuration")

// TLSFiles name the PEM files of a TLS server.
type TLSFiles struct {
	// CertFile holds the server certificate, followed by any
	// intermediates; KeyFile its private key. Both are required.
	CertFile, KeyFile string
	// CAFile, if set, holds the certificates of the authorities that sign
	// client certificates; clients must then present a certificate that
	// verifies against them. Empty accepts clients without certificates.
	CAFile string
}

// LoadTLS reads the files and returns a server configuration that speaks
// TLS 1.2 or newer. With a CA file the server requires and verifies client
// certificates (tls.RequireAndVerifyClientCert).
func LoadTLS(files TLSFiles) (*tls.Config, error) {
	if files.CertFile == "" || files.KeyFile == "" {
		return nil, fmt.Errorf("%w: a certificate needs both a certificate file and a key file", ErrTLS)
	}
	cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate %s with key %s: %w", ErrTLS, files.CertFile, files.KeyFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if files.CAFile != "" {
		pem, err := os.ReadFile(files.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: CA bundle: %w", ErrTLS, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA bundle %s holds no PEM certificate", ErrTLS, files.CAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
