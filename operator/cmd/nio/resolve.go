package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Kinds an argument can name.
const (
	kindMachine       = "machine"
	kindConfiguration = "nixosconfiguration"
	kindFleet         = "nixosfleet"
)

var kindAliases = map[string]string{
	"machine": kindMachine, "machines": kindMachine, "mach": kindMachine,
	"nixosconfiguration": kindConfiguration, "nixosconfigurations": kindConfiguration, "nixconf": kindConfiguration,
	"configuration": kindConfiguration, "config": kindConfiguration,
	"nixosfleet": kindFleet, "nixosfleets": kindFleet, "nixfleet": kindFleet, "fleet": kindFleet,
}

// parseRef splits "kind/name" (kind optional: "").
func parseRef(arg string) (kind, name string, err error) {
	k, n, ok := strings.Cut(arg, "/")
	if !ok {
		return "", arg, nil
	}
	kind, found := kindAliases[strings.ToLower(k)]
	if !found || n == "" {
		return "", "", withCode(exitUsage, "%q: want NAME or KIND/NAME, KIND one of machine, nixosconfiguration, nixosfleet", arg)
	}
	return kind, n, nil
}

// resolveConfiguration is the NixosConfiguration an argument names: the
// configuration itself, or the one a Machine runs (or, none yet, the one naming it).
// A bare name is a configuration first, then a Machine.
func resolveConfiguration(ctx context.Context, c client.Client, ns, arg string) (string, error) {
	kind, name, err := parseRef(arg)
	if err != nil {
		return "", err
	}
	if kind == kindFleet {
		return "", withCode(exitUsage, "%s: a fleet has no log of its own; name one of its configurations (nio get)", arg)
	}
	if kind != kindMachine {
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &nio.NixosConfiguration{})
		if err == nil || kind == kindConfiguration || !apierrors.IsNotFound(err) {
			return name, wrapGet(err, "NixosConfiguration", ns, name)
		}
	}
	var m nio.Machine
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &m); err != nil {
		if kind == "" && apierrors.IsNotFound(err) {
			return "", withCode(exitNotFound, "no NixosConfiguration or Machine %q in namespace %q", name, ns)
		}
		return "", wrapGet(err, "Machine", ns, name)
	}
	if m.Status.AppliedConfiguration != "" {
		return m.Status.AppliedConfiguration, nil
	}
	var list nio.NixosConfigurationList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return "", fmt.Errorf("list NixosConfigurations: %w", err)
	}
	for _, cfg := range list.Items {
		if cfg.Spec.MachineRef.Name == m.Name {
			return cfg.Name, nil
		}
	}
	return "", withCode(exitNotFound, "no NixosConfiguration names Machine %s/%s", ns, name)
}

func wrapGet(err error, kind, ns, name string) error {
	switch {
	case err == nil:
		return nil
	case apierrors.IsNotFound(err):
		return withCode(exitNotFound, "no %s %q in namespace %q", kind, name, ns)
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return withCode(exitForbidden, "%s %s/%s: %v", kind, ns, name, err)
	}
	return fmt.Errorf("get %s %s/%s: %w", kind, ns, name, err)
}

// completeFirst completes a command's one argument with the names of kinds.
func (g *globals) completeFirst(kinds ...string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return g.completeNames(cmd, kinds...), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeNames lists names of the kinds for shell completion (errors complete
// nothing).
func (g *globals) completeNames(cmd *cobra.Command, kinds ...string) []string {
	c, ns, err := g.client()
	if err != nil {
		return nil
	}
	ctx, cancel := g.ctx(cmd.Context())
	defer cancel()
	var out []string
	for _, k := range kinds {
		switch k {
		case kindConfiguration:
			var l nio.NixosConfigurationList
			if c.List(ctx, &l, client.InNamespace(ns)) == nil {
				for _, o := range l.Items {
					out = append(out, o.Name)
				}
			}
		case kindMachine:
			var l nio.MachineList
			if c.List(ctx, &l, client.InNamespace(ns)) == nil {
				for _, o := range l.Items {
					out = append(out, "machine/"+o.Name)
				}
			}
		case kindFleet:
			var l nio.NixosFleetList
			if c.List(ctx, &l, client.InNamespace(ns)) == nil {
				for _, o := range l.Items {
					out = append(out, "fleet/"+o.Name)
				}
			}
		}
	}
	return out
}
