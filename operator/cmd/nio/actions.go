package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// target is the object a request is made on.
type target struct {
	kind string // kindConfiguration or kindFleet
	obj  client.Object
}

// resolveTarget gets the configuration or fleet an argument names (a bare name: a
// configuration first, then a fleet).
func (g *globals) resolveTarget(ctx context.Context, arg string, allowed ...string) (target, error) {
	c, ns, err := g.client()
	if err != nil {
		return target{}, err
	}
	kind, name, err := parseRef(arg)
	if err != nil {
		return target{}, err
	}
	if kind != "" && !contains(allowed, kind) {
		return target{}, withCode(exitUsage, "%s: this command takes a %s", arg, strings.Join(allowed, " or "))
	}
	key := client.ObjectKey{Namespace: ns, Name: name}
	var lastErr error
	for _, k := range allowed {
		if kind != "" && k != kind {
			continue
		}
		var obj client.Object = &nio.NixosConfiguration{}
		label := "NixosConfiguration"
		if k == kindFleet {
			obj, label = &nio.NixosFleet{}, "NixosFleet"
		}
		err := c.Get(ctx, key, obj)
		if err == nil {
			return target{kind: k, obj: obj}, nil
		}
		lastErr = wrapGet(err, label, ns, name)
		if exitCodeOf(lastErr) != exitNotFound {
			return target{}, lastErr
		}
	}
	if kind == "" && len(allowed) > 1 {
		return target{}, withCode(exitNotFound, "no NixosConfiguration or NixosFleet %q in namespace %q", name, ns)
	}
	return target{}, lastErr
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// mergePatch applies a JSON merge patch to obj as the user.
func (g *globals) mergePatch(ctx context.Context, obj client.Object, patch map[string]any) error {
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	if err := g.kube.Patch(ctx, obj, client.RawPatch(types.MergePatchType, data)); err != nil {
		return wrapGet(err, obj.GetObjectKind().GroupVersionKind().Kind, obj.GetNamespace(), obj.GetName())
	}
	return nil
}

func annotate(key, value string) map[string]any {
	return map[string]any{"metadata": map[string]any{"annotations": map[string]any{key: value}}}
}

func newReconcile(g *globals) *cobra.Command {
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "reconcile <configuration|fleet>",
		Short: "Run a pass now (sets " + nio.RequestedAtAnnotation + ")",
		Long: `reconcile asks the operator for a pass now, like flux reconcile: a configuration
re-applies its ref's commit (even an unchanged one); a fleet resolves its ref again.
--wait waits for the outcome with a progress line: for a configuration until the
operator recorded the request handled (status.lastHandledRequestedAt), for a fleet
until the rollout of its latest commit completed or stopped.`,
		Example: `  nio reconcile worker-config --wait
  nio reconcile fleet/web --wait --timeout 30m`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeFirst(kindConfiguration, kindFleet),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			t, err := g.resolveTarget(ctx, args[0], kindConfiguration, kindFleet)
			if err == nil {
				err = g.mergePatch(ctx, t.obj, annotate(nio.RequestedAtAnnotation, requestValue(g.clock())))
			}
			cancel()
			if err != nil {
				return err
			}
			at := t.obj.GetAnnotations()[nio.RequestedAtAnnotation]
			fmt.Fprintf(g.out, "%s/%s: reconcile requested (%s=%s)\n", t.kind, t.obj.GetName(), nio.RequestedAtAnnotation, at)
			if !wait {
				return nil
			}
			return g.waitFor(cmd.Context(), t, at, timeout, waitState)
		},
	}
	cmd.Flags().BoolVarP(&wait, "wait", "w", false, "Wait for the outcome (exit 5 when it failed).")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "Longest wait with --wait (exit 6 past it).")
	return cmd
}

func requestValue(now time.Time) string { return now.UTC().Format(time.RFC3339Nano) }

// waitFor polls the target until the request at was handled (state says when, how
// it went and what to show meanwhile), printing progress.
func (g *globals) waitFor(ctx context.Context, t target, at string, timeout time.Duration, state func(target, string) (bool, string, string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := &progress{g: g}
	defer p.done()
	key := client.ObjectKeyFromObject(t.obj)
	for {
		rctx, rcancel := g.ctx(ctx)
		err := g.kube.Get(rctx, key, t.obj)
		rcancel()
		if err != nil && ctx.Err() == nil {
			return wrapGet(err, t.kind, key.Namespace, key.Name)
		}
		if err == nil {
			done, line, failed := state(t, at)
			p.show(line)
			if done {
				p.done()
				if failed != "" {
					return withCode(exitFailed, "%s/%s: %s", t.kind, key.Name, failed)
				}
				fmt.Fprintf(g.out, "%s/%s: %s\n", t.kind, key.Name, line)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if cmdCtxDone := ctx.Err(); cmdCtxDone == context.DeadlineExceeded {
				return withCode(exitTimeout, "%s/%s: no outcome within %s", t.kind, key.Name, timeout)
			}
			return withCode(exitCancelled, "interrupted")
		case <-time.After(time.Second):
		}
	}
}

// waitState says whether the request is handled, a progress line, and why it
// failed ("" when it did not).
func waitState(t target, at string) (done bool, line, failed string) {
	switch o := t.obj.(type) {
	case *nio.NixosConfiguration:
		st := o.Status
		ready := meta.FindStatusCondition(st.Conditions, "Ready")
		line = "waiting for the operator"
		if c := meta.FindStatusCondition(st.Conditions, "Reconciling"); c != nil && c.Status == "True" {
			line = c.Message
		} else if ready != nil {
			line = ready.Message
		}
		if st.LastHandledRequestedAt != at {
			return false, line, ""
		}
		if ready != nil && ready.Status == "True" {
			return true, fmt.Sprintf("Ready: %s", ready.Message), ""
		}
		if ready != nil {
			return true, line, fmt.Sprintf("%s: %s", ready.Reason, ready.Message)
		}
		return true, line, "no Ready condition"
	case *nio.NixosFleet:
		st := o.Status
		ro := st.Rollout
		if ro == nil || o.Status.ObservedGeneration < o.Generation {
			return false, "waiting for the fleet's rollout", ""
		}
		line = fmt.Sprintf("rollout %s %s: %d/%d updated, %d ready, %d failed", short(ro.Commit), ro.Phase, st.Updated, st.Selected, st.Ready, st.Failed)
		if ro.Commit != st.LatestCommit {
			return false, line, ""
		}
		switch ro.Phase {
		case nio.RolloutCompleted:
			return true, line, ""
		case nio.RolloutPaused, nio.RolloutReverted:
			return true, line, fmt.Sprintf("rollout %s: %s", ro.Phase, ro.Message)
		}
		return false, line, ""
	}
	return true, "", "unknown kind"
}

// progress is one line rewritten in place on a terminal, a line per change when
// piped.
type progress struct {
	g    *globals
	last string
	open bool
}

func (p *progress) show(line string) {
	if line == p.last {
		return
	}
	p.last = line
	if p.g.terminal() {
		fmt.Fprintf(p.g.out, "\r\x1b[K… %s", oneLine(line, 120))
		p.open = true
		return
	}
	fmt.Fprintf(p.g.out, "… %s\n", line)
}

func (p *progress) done() {
	if p.open {
		fmt.Fprint(p.g.out, "\r\x1b[K")
		p.open = false
	}
}

func newSuspend(g *globals, suspend bool) *cobra.Command {
	verb, short := "resume", "Resume a configuration (spec.suspend=false) or a fleet (spec.paused=false)"
	if suspend {
		verb, short = "suspend", "Suspend a configuration (spec.suspend) or pause a fleet (spec.paused)"
	}
	return &cobra.Command{
		Use:               verb + " <configuration|fleet>",
		Short:             short,
		Example:           fmt.Sprintf("  nio %s worker-config\n  nio %s fleet/web", verb, verb),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeFirst(kindConfiguration, kindFleet),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			defer cancel()
			t, err := g.resolveTarget(ctx, args[0], kindConfiguration, kindFleet)
			if err != nil {
				return err
			}
			field := "suspend"
			if t.kind == kindFleet {
				field = "paused"
			}
			if err := g.mergePatch(ctx, t.obj, map[string]any{"spec": map[string]any{field: suspend}}); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s/%s: spec.%s=%t\n", t.kind, t.obj.GetName(), field, suspend)
			return nil
		},
	}
}

func newReinstall(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "reinstall <configuration>",
		Short: "Allow one more nixos-anywhere run (sets " + nio.ReinstallAnnotation + ")",
		Long: `reinstall lets a fullInstall configuration run nixos-anywhere once more: it
re-partitions and re-installs the Machine, wiping its disks. It asks for
confirmation (type the configuration's name) unless --yes.`,
		Example:           "  nio reinstall worker-config\n  nio reinstall worker-config --yes",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: g.completeFirst(kindConfiguration),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			t, err := g.resolveTarget(ctx, args[0], kindConfiguration)
			cancel()
			if err != nil {
				return err
			}
			c := t.obj.(*nio.NixosConfiguration)
			if !c.Spec.FullInstall {
				return withCode(exitUsage, "%s has fullInstall: false: there is nothing to reinstall (set spec.fullInstall to let NIO install the Machine)", c.Name)
			}
			if !yes {
				fmt.Fprintf(g.out, "This re-installs Machine %s from scratch with nixos-anywhere: its disks are wiped.\nType the configuration's name (%s) to go on: ", c.Spec.MachineRef.Name, c.Name)
				answer, _ := bufio.NewReader(g.in).ReadString('\n')
				if strings.TrimSpace(answer) != c.Name {
					return withCode(exitCancelled, "not confirmed: nothing changed")
				}
			}
			ctx, cancel = g.ctx(cmd.Context())
			defer cancel()
			if err := g.mergePatch(ctx, c, annotate(nio.ReinstallAnnotation, requestValue(g.clock()))); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s/%s: reinstall requested; follow it with: nio logs -f %s\n", kindConfiguration, c.Name, c.Name)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "Do not ask for confirmation.")
	return cmd
}

func newFleet(g *globals) *cobra.Command {
	fleet := &cobra.Command{Use: "fleet", Short: "Requests to a NixosFleet", Args: cobra.NoArgs}
	promote := &cobra.Command{
		Use:   "promote <fleet>",
		Short: "Move a paused rollout on (sets " + nio.PromoteAnnotation + ")",
		Long: `promote moves a fleet's rollout on: past a manual gate (promotion: Manual) or a
failure pause the next batch starts; after a revert, the reverted revision's
rollout starts again from the canary.`,
		Example: "  nio fleet promote web",
		Args:    cobra.ExactArgs(1),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			names := g.completeNames(cmd, kindFleet)
			for i := range names {
				names[i] = strings.TrimPrefix(names[i], "fleet/")
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			defer cancel()
			name := args[0]
			if k, n, err := parseRef(name); err == nil && k == kindFleet {
				name = n
			}
			t, err := g.resolveTarget(ctx, "fleet/"+name, kindFleet)
			if err != nil {
				return err
			}
			if err := g.mergePatch(ctx, t.obj, annotate(nio.PromoteAnnotation, requestValue(g.clock()))); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s/%s: promote requested\n", kindFleet, t.obj.GetName())
			return nil
		},
	}
	fleet.AddCommand(promote)
	return fleet
}
