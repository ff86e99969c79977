// Command demo is `make demo`: NIO's usage guide, run for real on this machine. It
// starts a control plane from bin/k8s, runs install.sh against it, runs nio-operator
// as its ServiceAccount, starts one demo host (a network and mount namespace with a
// real sshd and the real nio-agent, real Nix on a scratch system profile — not a
// NixOS kernel), serves a git repository holding an offline fixture flake, and walks
// the guide's steps with kubectl. It then pushes a second commit and shows
// appliedCommit move, prints the KUBECONFIG to explore with, and runs until Ctrl-C,
// which cleans everything up.
//
// DEMO_EXIT=1 exits after the walk-through: status 0 only if every step held.
// It must run as root (the host's namespaces).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/nixtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Getenv("DEMO_EXIT") == "1")
	if err != nil {
		fmt.Fprintln(os.Stderr, "\ndemo FAILED:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, exitAfterWalk bool) (err error) {
	s, err := harness.Up(ctx, os.Stdout)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n\n%s", err, s.LogTails(40))
		}
		fmt.Println("\n== Cleaning up: stopping the operator, the agent, sshd, the control plane; deleting the network namespace")
		if cerr := s.Down(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := s.WalkGuide(ctx); err != nil {
		return err
	}
	if err := showHost(ctx, s); err != nil {
		return err
	}
	s.Printf("\n== The build log the operator streamed from the host, read with nio logs as alice,\n   a ServiceAccount who may get NixosConfigurations here: the operator answers only such users)\n")
	if run, err := s.Nio(ctx, "", "logs", harness.GuideConfiguration, "-n", harness.GuideNamespace); err != nil || run.Code != 0 {
		return fmt.Errorf("nio logs: exit %d: %v", run.Code, err)
	}

	s.Printf("\n== A second commit: push it, and the operator applies it without any other step; nio logs -f follows the build live\n")
	second, err := s.Git.CommitFixture("basic", map[string]string{nixtest.VarVersion: "2"}, "worker: version 2")
	if err != nil {
		return err
	}
	if run, err := s.FollowBuildLog(ctx, second); err != nil || run.Code != 0 {
		return fmt.Errorf("nio logs -f: exit %d: %v", run.Code, err)
	}
	if err := s.WaitApplied(ctx, second); err != nil {
		return err
	}
	if _, err := s.Control.Run(ctx, "get", "machine", harness.GuideMachine, "-o", "jsonpath={.status.appliedCommit}{\"\\n\"}"); err != nil {
		return err
	}
	if _, err := s.Control.Run(ctx, "get", "events", "--field-selector", "involvedObject.name="+harness.GuideConfiguration); err != nil {
		return err
	}
	if err := showHost(ctx, s); err != nil {
		return err
	}
	if run, err := s.Nio(ctx, "", "get", "-n", harness.GuideNamespace); err != nil || run.Code != 0 {
		return fmt.Errorf("nio get: exit %d: %v", run.Code, err)
	}
	s.Printf("\nEvery step held: appliedCommit moved from %s to %s.\n", s.FirstCommit, second)
	if exitAfterWalk {
		return nil
	}
	alice, err := s.DemoUser(ctx)
	if err != nil {
		return err
	}
	s.Printf("\n== The demo keeps running. In another shell:\n\n  export KUBECONFIG=%s\n  %s get machines,nixosconfigurations -A\n\nand as alice, with nio:\n\n  export KUBECONFIG=%s NIO_OPERATOR_URL=%s NIO_OPERATOR_CA=%s\n  %s get\n  %s logs -f %s\n\nOperator log: %s\nPress Ctrl-C to stop and clean up.\n",
		s.Control.AdminKubeconfig, s.Control.Kubectl, alice, s.Operator.LogURL(), s.Path("operator-ca.crt"), s.Bin.Nio, s.Bin.Nio, harness.GuideConfiguration, s.Path("log", "nio-operator.log"))
	<-ctx.Done()
	return nil
}

// showHost prints what the host runs, from inside its namespace.
func showHost(ctx context.Context, s *harness.Stack) error {
	current, err := s.Host.CurrentSystem(ctx)
	if err != nil {
		return err
	}
	acts, err := s.Host.Activations(ctx)
	if err != nil {
		return err
	}
	s.Printf("\n$ readlink /run/current-system   (on the demo host)\n%s\n", current)
	s.Printf("\n$ cat /run/activations.log   (on the demo host: switch-to-configuration runs)\n%s\n", strings.Join(acts, "\n"))
	return nil
}
