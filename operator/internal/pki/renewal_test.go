package pki_test

import (
	"testing"
	"time"

	"github.com/homystack/nio/operator/internal/pki"
)

func TestNeedsRenewalFromTwoThirdsOfLife(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	end := start.Add(90 * 24 * time.Hour) // renewal point: day 60
	for _, tc := range []struct {
		name string
		now  time.Time
		want bool
	}{
		{"not yet valid", start.Add(-time.Hour), false},
		{"just issued", start, false},
		{"half way", start.Add(45 * 24 * time.Hour), false},
		{"a second before 2/3", start.Add(60*24*time.Hour - time.Second), false},
		{"at 2/3", start.Add(60 * 24 * time.Hour), true},
		{"after 2/3", start.Add(80 * 24 * time.Hour), true},
		{"expired", end.Add(time.Hour), true},
	} {
		if got := pki.NeedsRenewal(start, end, tc.now); got != tc.want {
			t.Errorf("%s: NeedsRenewal = %v, want %v", tc.name, got, tc.want)
		}
	}
	if !pki.NeedsRenewal(end, start, start) {
		t.Error("a certificate ending before it starts must be renewed")
	}
}

func TestCertificateNeedsRenewalUsesTheCertificateValidity(t *testing.T) {
	iss := newIssuer(t)
	id, err := iss.IssueMachineServer("prod", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	cert := parseCertPEM(t, id.CertPEM)
	life := cert.NotAfter.Sub(cert.NotBefore)
	if pki.CertificateNeedsRenewal(cert, cert.NotBefore.Add(life/2)) {
		t.Error("renewal due at half of life")
	}
	if !pki.CertificateNeedsRenewal(cert, cert.NotBefore.Add(life*3/4)) {
		t.Error("renewal not due at 3/4 of life")
	}
}
