package server

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/testkit/facterfixture"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func factsServer(t *testing.T, script string) agentv1.AgentServiceClient {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nixos-facter")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Executor: newFakeExecutor(), StateDir: t.TempDir(), MaxSourceBytes: 1 << 20, FacterPath: bin})
	if err != nil {
		t.Fatal(err)
	}
	return startBufconn(t, s)
}

func TestFactsReturnsTheFacterReport(t *testing.T) {
	fixture, want := facterfixture.WriteFile(t), facterfixture.Report
	resp, err := factsServer(t, `exec cat "`+fixture+`"`).Facts(context.Background(), &agentv1.FactsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got, exp map[string]any
	if err := json.Unmarshal(resp.GetReportJson(), &got); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(want, &exp)
	for _, key := range []string{"version", "system", "hardware"} {
		if _, ok := got[key]; !ok {
			t.Errorf("report lacks %q", key)
		}
	}
	if len(resp.GetReportJson()) < len(want)/2 || got["system"] != exp["system"] {
		t.Errorf("report is not the fixture (%d bytes, system %v)", len(resp.GetReportJson()), got["system"])
	}
}

func TestFactsWithGarbageOutputIsAnError(t *testing.T) {
	_, err := factsServer(t, `echo "nixos-facter: panic: runtime error"`).Facts(context.Background(), &agentv1.FactsRequest{})
	if status.Code(err) != codes.Internal {
		t.Fatalf("err = %v, want INTERNAL", err)
	}
}
