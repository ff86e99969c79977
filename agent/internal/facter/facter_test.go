package facter

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// standIn writes an executable nixos-facter stand-in that prints file (or text).
func standIn(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nixos-facter")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunReturnsARealShapedReport(t *testing.T) {
	fixture, err := filepath.Abs("testdata/facter-kvm-vps.json")
	if err != nil {
		t.Fatal(err)
	}
	report, err := Run(context.Background(), standIn(t, `exec cat "`+fixture+`"`))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Version  int             `json:"version"`
		System   string          `json:"system"`
		Hardware json.RawMessage `json:"hardware"`
	}
	if err := json.Unmarshal(report, &r); err != nil || r.Version != 1 || r.System != "x86_64-linux" || len(r.Hardware) == 0 {
		t.Fatalf("report = %+v (%v)", r, err)
	}
}

func TestRunRefusesGarbageAndFailures(t *testing.T) {
	cases := map[string]string{
		"not json":       `echo "Segmentation fault (core dumped)"`,
		"json array":     `echo '[1,2]'`,
		"truncated json": `printf '{"version": 1, "hardware": {'`,
		"exit status":    `echo '{"version":1}'; echo "cannot read /sys" >&2; exit 3`,
	}
	for name, script := range cases {
		t.Run(name, func(t *testing.T) {
			if report, err := Run(context.Background(), standIn(t, script)); err == nil {
				t.Fatalf("accepted %q", report)
			}
		})
	}
	if _, err := Run(context.Background(), filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("a missing binary: %v", err)
	}
}
