package server

import (
	"context"
	"testing"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestGenerationTargetRefusesAnythingButASwitchWithoutSecrets(t *testing.T) {
	c := startBufconn(t, newTestServer(t, newFakeExecutor(), t.TempDir()))
	boot := generationHeader("op-boot", 1)
	boot.Action = agentv1.Action_ACTION_BOOT
	secrets := generationHeader("op-secrets", 1)
	secrets.Secrets = &agentv1.SecretsManifest{}
	negative := generationHeader("op-negative", -1)
	for _, h := range []*agentv1.ApplyHeader{boot, secrets, negative} {
		st, err := c.Apply(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Header{Header: h}}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", h.GetOperationId(), err)
		}
	}
}
