package main

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// reasonRolledBackByUser is the Ready reason of a configuration whose Machine was
// rolled back on request (the operator's controller.ReasonRolledBackByUser).
const reasonRolledBackByUser = "RolledBackByUser"

func newRollback(g *globals) *cobra.Command {
	var yes, wait bool
	var toGeneration int64
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rollback <machine>",
		Short: "Activate an earlier generation on a Machine through its agent (sets " + nio.RollbackAnnotation + " and spec.suspend)",
		Long: `rollback has the Machine's nio-agent activate an earlier generation of its system
profile — the previous one, or --to-generation N — with the configuration's health
checks and confirm window (no confirmation: the host goes back to where it was).
Nothing is built, and it never goes over SSH: without an agent that can do it the
request is refused (RollbackNeedsAgent).

It finds the Machine's NixosConfiguration, suspends it (spec.suspend: true, so the
next pass does not re-apply its commit) and sets the rollback annotation. The
configuration then reports Ready=False, reason RolledBackByUser, until
'nio resume <configuration>', whose pass applies the ref's commit again.

It asks for confirmation (type the Machine's name) unless --yes. --wait waits for
the operator's verdict (exit 5 when the rollback was refused or failed).`,
		Example: `  nio rollback worker-01 --wait
  nio rollback worker-01 --to-generation 41 --yes`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeFirst(kindMachine),
		RunE: func(cmd *cobra.Command, args []string) error {
			what, gen := "previous", "the previous generation"
			if cmd.Flags().Changed("to-generation") {
				if toGeneration <= 0 {
					return withCode(exitUsage, "--to-generation %d: want a generation number (see status.history, or nix-env --list-generations -p /nix/var/nix/profiles/system on the host)", toGeneration)
				}
				what, gen = strconv.FormatInt(toGeneration, 10), fmt.Sprintf("generation %d", toGeneration)
			}
			ctx, cancel := g.ctx(cmd.Context())
			c, machine, err := g.configurationOfMachine(ctx, args[0])
			if err == nil {
				err = g.fleetAllowsRollback(ctx, c)
			}
			cancel()
			if err != nil {
				return err
			}
			if !yes {
				fmt.Fprintf(g.out, "This activates %s on Machine %s through its agent and suspends NixosConfiguration %s\n(it stays there until: nio resume %s).\nType the Machine's name (%s) to go on: ",
					gen, machine, c.Name, c.Name, machine)
				answer, _ := bufio.NewReader(g.in).ReadString('\n')
				if strings.TrimSpace(answer) != machine {
					return withCode(exitCancelled, "not confirmed: nothing changed")
				}
			}
			value := what + "@" + requestValue(g.clock())
			patch := annotate(nio.RollbackAnnotation, value)
			patch["spec"] = map[string]any{"suspend": true}
			ctx, cancel = g.ctx(cmd.Context())
			err = g.mergePatch(ctx, c, patch)
			cancel()
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s/%s: rollback of Machine %s to %s requested (%s=%s); suspended\n", kindConfiguration, c.Name, machine, gen, nio.RollbackAnnotation, value)
			if !wait {
				return nil
			}
			return g.waitFor(cmd.Context(), target{kind: kindConfiguration, obj: c}, value, timeout, rollbackState)
		},
	}
	cmd.Flags().Int64Var(&toGeneration, "to-generation", 0, "The system profile generation to activate (default: the previous one).")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "Do not ask for confirmation.")
	cmd.Flags().BoolVarP(&wait, "wait", "w", false, "Wait for the outcome (exit 5 when it was refused or failed).")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "Longest wait with --wait (exit 6 past it).")
	return cmd
}

// fleetAllowsRollback refuses to roll back a fleet's Machine while the fleet may
// move it: its next rollout rewrites the configuration's spec (suspend included) and
// would re-apply what was rolled back. A paused fleet moves nothing.
func (g *globals) fleetAllowsRollback(ctx context.Context, conf *nio.NixosConfiguration) error {
	name := conf.Labels[nio.FleetLabel]
	if name == "" {
		return nil
	}
	c, _, err := g.client()
	if err != nil {
		return err
	}
	var fleet nio.NixosFleet
	if err := c.Get(ctx, client.ObjectKey{Namespace: conf.Namespace, Name: name}, &fleet); err != nil {
		return wrapGet(err, "NixosFleet", conf.Namespace, name)
	}
	if !fleet.Spec.Paused {
		return withCode(exitError, "NixosConfiguration %s belongs to NixosFleet %s, whose next rollout would re-apply it: pause the fleet first (nio suspend fleet/%s), then roll back", conf.Name, name, name)
	}
	return nil
}

// configurationOfMachine finds the NixosConfiguration a Machine runs: the one its
// status names, else the one whose status says it was applied to it.
func (g *globals) configurationOfMachine(ctx context.Context, arg string) (*nio.NixosConfiguration, string, error) {
	c, ns, err := g.client()
	if err != nil {
		return nil, "", err
	}
	kind, name, err := parseRef(arg)
	if err != nil {
		return nil, "", err
	}
	if kind != "" && kind != kindMachine {
		return nil, "", withCode(exitUsage, "%s: rollback takes a Machine", arg)
	}
	var m nio.Machine
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &m); err != nil {
		return nil, "", wrapGet(err, "Machine", ns, name)
	}
	if n := m.Status.AppliedConfiguration; n != "" {
		var conf nio.NixosConfiguration
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, &conf); err != nil {
			return nil, "", wrapGet(err, "NixosConfiguration", ns, n)
		}
		return &conf, name, nil
	}
	// After a rollback to a generation of unknown commit the Machine names none.
	var list nio.NixosConfigurationList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, "", wrapGet(err, "NixosConfiguration", ns, "")
	}
	var found []*nio.NixosConfiguration
	for i := range list.Items {
		if list.Items[i].Status.TargetMachine == name && list.Items[i].DeletionTimestamp.IsZero() {
			found = append(found, &list.Items[i])
		}
	}
	switch len(found) {
	case 0:
		return nil, "", withCode(exitNotFound, "Machine %s runs no NixosConfiguration NIO applied: there is nothing to roll back", name)
	case 1:
		return found[0], name, nil
	}
	return nil, "", withCode(exitError, "several NixosConfigurations were applied to Machine %s and it names none: roll back with the annotation %s on the right one", name, nio.RollbackAnnotation)
}

// rollbackState is waitFor's state of a rollback request: handled once
// status.lastHandledRollbackAt is the request, successful with RolledBackByUser.
func rollbackState(t target, at string) (done bool, line, failed string) {
	c, ok := t.obj.(*nio.NixosConfiguration)
	if !ok {
		return true, "", "unknown kind"
	}
	ready := meta.FindStatusCondition(c.Status.Conditions, "Ready")
	line = "waiting for the operator"
	if r := meta.FindStatusCondition(c.Status.Conditions, "Reconciling"); r != nil && r.Status == "True" {
		line = r.Message
	} else if ready != nil && c.Status.LastHandledRollbackAt == at {
		line = ready.Message
	}
	if c.Status.LastHandledRollbackAt != at {
		if ready != nil && ready.Reason == "RollbackNeedsSuspend" {
			line = ready.Message
		}
		return false, line, ""
	}
	switch {
	case ready == nil:
		return true, line, "no Ready condition"
	case ready.Reason == reasonRolledBackByUser:
		return true, "Rolled back: " + ready.Message, ""
	}
	return true, line, fmt.Sprintf("%s: %s", ready.Reason, ready.Message)
}
