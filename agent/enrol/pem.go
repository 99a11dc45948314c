package enrol

import (
	"crypto/x509"
	"encoding/pem"
)

// mustPEMKey encodes a freshly generated key for tls.X509KeyPair's check;
// a key we just generated always marshals.
func mustPEMKey(key any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
