package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
)

// maxCSRBytes bounds what is parsed: a real CSR is well under 2 KiB.
const maxCSRBytes = 64 << 10

var (
	oidExtSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtendedKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtKeyUsageServer   = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
)

// sanTagDNSName is the context-specific tag of dNSName in a GeneralName.
const sanTagDNSName = 2

// ErrCSRRefused marks a CSR that parsed but asks for something a Machine may not
// have. Callers tell the agent no, and do not retry.
var ErrCSRRefused = errors.New("certificate request refused")

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	if len(csrPEM) > maxCSRBytes {
		return nil, fmt.Errorf("%w: %d bytes is too large", ErrCSRRefused, len(csrPEM))
	}
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: no PEM CERTIFICATE REQUEST block", ErrCSRRefused)
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, fmt.Errorf("%w: more than one PEM block", ErrCSRRefused)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %v", ErrCSRRefused, err)
	}
	if err := csr.CheckSignature(); err != nil {
		// The requester must hold the key it wants certified.
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrCSRRefused, err)
	}
	return csr, nil
}

// checkMachineCSR refuses anything in csr beyond a server certificate for dns. The
// certificate is built from a fresh template, so requested extensions are never
// copied; they are still checked, so a host asking for more is told so (and the
// refusal shows up in the operator's events) instead of silently getting less.
func checkMachineCSR(csr *x509.CertificateRequest, dns string) error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCSRRefused, fmt.Sprintf(format, args...))
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return refuse("%v", err)
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != dns {
		return refuse("subject CN %q is not %q", cn, dns)
	}
	for _, name := range csr.DNSNames {
		if name != dns {
			return refuse("DNS name %q is not %q", name, dns)
		}
	}
	if len(csr.IPAddresses) > 0 {
		return refuse("IP address SANs are not allowed (%v)", csr.IPAddresses)
	}
	if len(csr.URIs) > 0 {
		return refuse("URI SANs are not allowed (%d requested)", len(csr.URIs))
	}
	if len(csr.EmailAddresses) > 0 {
		return refuse("email SANs are not allowed (%d requested)", len(csr.EmailAddresses))
	}
	for _, ext := range csr.Extensions {
		var err error
		switch {
		case ext.Id.Equal(oidExtSubjectAltName):
			err = checkSANOnlyDNS(ext.Value)
		case ext.Id.Equal(oidExtBasicConstraints):
			err = checkNotCA(ext.Value)
		case ext.Id.Equal(oidExtExtendedKeyUsage):
			err = checkServerAuthOnly(ext.Value)
		case ext.Id.Equal(oidExtKeyUsage):
			err = checkNoCertSign(ext.Value)
		}
		if err != nil {
			return refuse("%v", err)
		}
	}
	return nil
}

func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !slices.Contains([]elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()}, k.Curve) {
			return fmt.Errorf("ECDSA curve %s is not allowed", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too short (want at least 2048)", k.N.BitLen())
		}
	default:
		return fmt.Errorf("public key type %T is not allowed", pub)
	}
	return nil
}

// checkSANOnlyDNS refuses name types Go does not parse into the CSR's fields
// (otherName, directoryName, registeredID, ...), which would otherwise pass unseen.
func checkSANOnlyDNS(der []byte) error {
	var seq asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &seq); err != nil || len(rest) > 0 || seq.Tag != asn1.TagSequence {
		return errors.New("malformed subjectAltName extension")
	}
	for rest := seq.Bytes; len(rest) > 0; {
		var name asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &name); err != nil {
			return errors.New("malformed subjectAltName entry")
		}
		if name.Class != asn1.ClassContextSpecific || name.Tag != sanTagDNSName {
			return fmt.Errorf("subjectAltName of type [%d] is not allowed, only DNS names", name.Tag)
		}
	}
	return nil
}

func checkNotCA(der []byte) error {
	var bc struct {
		IsCA       bool `asn1:"optional"`
		MaxPathLen int  `asn1:"optional,default:-1"`
	}
	if rest, err := asn1.Unmarshal(der, &bc); err != nil || len(rest) > 0 {
		return errors.New("malformed basicConstraints extension")
	}
	if bc.IsCA {
		return errors.New("a CA certificate is not allowed")
	}
	return nil
}

func checkServerAuthOnly(der []byte) error {
	var oids []asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(der, &oids); err != nil || len(rest) > 0 {
		return errors.New("malformed extKeyUsage extension")
	}
	for _, oid := range oids {
		if !oid.Equal(oidExtKeyUsageServer) {
			return fmt.Errorf("extended key usage %s is not allowed, only server auth (%s)", oid, oidExtKeyUsageServer)
		}
	}
	return nil
}

func checkNoCertSign(der []byte) error {
	var bits asn1.BitString
	if rest, err := asn1.Unmarshal(der, &bits); err != nil || len(rest) > 0 {
		return errors.New("malformed keyUsage extension")
	}
	// Bit 5 is keyCertSign, bit 6 cRLSign (RFC 5280 4.2.1.3).
	if bits.At(5) == 1 || bits.At(6) == 1 {
		return errors.New("key usage certSign/cRLSign is not allowed")
	}
	return nil
}
