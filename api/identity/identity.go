// Package identity holds the names the operator and nio-agent use to recognise each
// other over mTLS. Both sides import it, so the encoding lives in one place.
package identity

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// OperatorURI is the URI SAN that marks a client certificate as the operator's. The
// agent refuses any client certificate, even one chained to the right CA, that lacks it.
const OperatorURI = "spiffe://nio.homystack.com/operator"

// MachineDomain is the DNS suffix of Machine server names.
const MachineDomain = "machine.nio"

// MachineDNSName is the DNS SAN a Machine's agent certificate carries, and the server
// name the operator verifies: `<name>.<namespace>.machine.nio`.
func MachineDNSName(namespace, name string) string {
	return name + "." + namespace + "." + MachineDomain
}

// IsOperator reports whether cert carries the operator identity.
func IsOperator(cert *x509.Certificate) bool {
	for _, u := range cert.URIs {
		if u.String() == OperatorURI {
			return true
		}
	}
	return false
}

// OperatorURL is OperatorURI parsed, for certificate templates.
func OperatorURL() *url.URL {
	u, err := url.Parse(OperatorURI)
	if err != nil {
		panic(err) // a constant; cannot fail
	}
	return u
}

// ParseMachineDNSName splits a Machine DNS name into namespace and name. A Machine's
// name may contain dots; a namespace never does, so it is the last label.
func ParseMachineDNSName(dns string) (namespace, name string, err error) {
	rest, ok := strings.CutSuffix(dns, "."+MachineDomain)
	i := strings.LastIndex(rest, ".")
	if !ok || i <= 0 || i == len(rest)-1 {
		return "", "", fmt.Errorf("%q is not a machine name (want <name>.<namespace>.%s)", dns, MachineDomain)
	}
	return rest[i+1:], rest[:i], nil
}
