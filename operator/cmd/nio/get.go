package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// row is one object of `nio get`; -o json prints these.
type row struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Target: a Machine's configuration, a configuration's Machine, a fleet's
	// ready/selected Machines.
	Target string `json:"target,omitempty"`
	// Ready is the Ready condition's status (True, False, Unknown).
	Ready string `json:"ready"`
	// AppliedCommit runs (confirmed); LatestCommit is what the ref points at.
	AppliedCommit string `json:"appliedCommit,omitempty"`
	LatestCommit  string `json:"latestCommit,omitempty"`
	// Transport of the last operation: agent, ssh or install.
	Transport string `json:"transport,omitempty"`
	// Generation is the system profile generation (of the Machine, or of the
	// configuration's last operation).
	Generation  int64      `json:"generation,omitempty"`
	NeedsReboot bool       `json:"needsReboot,omitempty"`
	Agent       string     `json:"agentVersion,omitempty"`
	AgentUp     bool       `json:"agentConnected,omitempty"`
	CertExpiry  *time.Time `json:"certificateNotAfter,omitempty"`
	// LastError is why it is not Ready, or the last operation's failure.
	LastError string `json:"lastError,omitempty"`
}

func newGet(g *globals) *cobra.Command {
	var output string
	var all bool
	cmd := &cobra.Command{
		Use:   "get",
		Short: "Machines, NixosConfigurations and NixosFleets in one table",
		Long: `get lists the Machines, NixosConfigurations and NixosFleets of a namespace (or
all, -A): the commit applied against the latest, the transport of the last
operation, the system generation, whether a reboot is pending, the agent's version
and certificate expiry, and the last error. Colour on a terminal, plain when piped.`,
		Example: `  nio get
  nio get -A
  nio get -o json | jq '.[] | select(.ready != "True")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" && output != "table" {
				return withCode(exitUsage, "-o %q: want table or json", output)
			}
			rows, err := g.rows(cmd, all)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(g.out)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			if len(rows) == 0 {
				_, err := fmt.Fprintln(g.out, "No Machines, NixosConfigurations or NixosFleets found.")
				return err
			}
			return writeTable(g.out, tableHeader(all), tableRows(rows, all, g.clock()), g.colour())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: table (default) or json.")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "List every namespace.")
	return cmd
}

func (g *globals) rows(cmd *cobra.Command, all bool) ([]row, error) {
	c, ns, err := g.client()
	if err != nil {
		return nil, err
	}
	var opts []client.ListOption
	if !all {
		opts = append(opts, client.InNamespace(ns))
	}
	ctx, cancel := g.ctx(cmd.Context())
	defer cancel()
	var machines nio.MachineList
	var configs nio.NixosConfigurationList
	var fleets nio.NixosFleetList
	if err := c.List(ctx, &machines, opts...); err != nil {
		return nil, fmt.Errorf("list Machines: %w", err)
	}
	if err := c.List(ctx, &configs, opts...); err != nil {
		return nil, fmt.Errorf("list NixosConfigurations: %w", err)
	}
	if err := c.List(ctx, &fleets, opts...); err != nil {
		return nil, fmt.Errorf("list NixosFleets: %w", err)
	}
	return buildRows(machines.Items, configs.Items, fleets.Items), nil
}

// buildRows makes the rows: each kind sorted by namespace and name, Machines first.
func buildRows(machines []nio.Machine, configs []nio.NixosConfiguration, fleets []nio.NixosFleet) []row {
	byMachine := map[string][]*nio.NixosConfiguration{}
	for i := range configs {
		k := configs[i].Namespace + "/" + configs[i].Spec.MachineRef.Name
		byMachine[k] = append(byMachine[k], &configs[i])
	}
	var out []row
	for _, m := range machines {
		r := row{Kind: "Machine", Namespace: m.Namespace, Name: m.Name, Ready: readyOf(m.Status.Conditions),
			Target: m.Status.AppliedConfiguration, AppliedCommit: m.Status.AppliedCommit}
		c := configurationOf(&m, byMachine[m.Namespace+"/"+m.Name])
		if c != nil {
			r.Target = c.Name
			r.LatestCommit = c.Status.LatestCommit
			if h := lastHistory(c); h != nil {
				r.Transport = string(h.Transport)
			}
		}
		if s := m.Status.System; s != nil {
			r.Generation, r.NeedsReboot = s.Generation, s.NeedsReboot
		}
		if a := m.Status.Agent; a != nil {
			r.Agent, r.AgentUp = a.Version, a.Connected
			if a.CertificateNotAfter != nil {
				t := a.CertificateNotAfter.UTC()
				r.CertExpiry = &t
			}
		}
		r.LastError = notReadyMessage(m.Status.Conditions)
		out = append(out, r)
	}
	for i := range configs {
		c := &configs[i]
		r := row{Kind: "NixosConfiguration", Namespace: c.Namespace, Name: c.Name, Target: c.Spec.MachineRef.Name,
			Ready: readyOf(c.Status.Conditions), AppliedCommit: c.Status.AppliedCommit, LatestCommit: c.Status.LatestCommit}
		if h := lastHistory(c); h != nil {
			r.Transport, r.Generation = string(h.Transport), h.Generation
			if h.Result != nio.ResultSucceeded {
				r.LastError = h.Message
			}
		}
		if msg := notReadyMessage(c.Status.Conditions); msg != "" {
			r.LastError = msg
		}
		out = append(out, r)
	}
	for _, f := range fleets {
		r := row{Kind: "NixosFleet", Namespace: f.Namespace, Name: f.Name, Ready: readyOf(f.Status.Conditions),
			Target: fmt.Sprintf("%d/%d ready", f.Status.Ready, f.Status.Selected), LatestCommit: f.Status.LatestCommit}
		if ro := f.Status.Rollout; ro != nil {
			if ro.Phase == nio.RolloutCompleted {
				r.AppliedCommit = ro.Commit
			}
			if ro.Phase != nio.RolloutCompleted && ro.Phase != nio.RolloutProgressing {
				r.LastError = ro.Message
			}
		}
		if msg := notReadyMessage(f.Status.Conditions); msg != "" && r.LastError == "" {
			r.LastError = msg
		}
		out = append(out, r)
	}
	kinds := map[string]int{"Machine": 0, "NixosConfiguration": 1, "NixosFleet": 2}
	slices.SortStableFunc(out, func(a, b row) int {
		return cmp.Or(cmp.Compare(kinds[a.Kind], kinds[b.Kind]), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// configurationOf is the configuration a Machine runs, else the first naming it.
func configurationOf(m *nio.Machine, naming []*nio.NixosConfiguration) *nio.NixosConfiguration {
	for _, c := range naming {
		if c.Name == m.Status.AppliedConfiguration {
			return c
		}
	}
	if len(naming) > 0 {
		return naming[0]
	}
	return nil
}

func lastHistory(c *nio.NixosConfiguration) *nio.HistoryEntry {
	if len(c.Status.History) == 0 {
		return nil
	}
	// The newest entry is first (pushHistory prepends).
	return &c.Status.History[0]
}

func readyOf(conds []metav1.Condition) string {
	if c := meta.FindStatusCondition(conds, "Ready"); c != nil {
		return string(c.Status)
	}
	return "Unknown"
}

func notReadyMessage(conds []metav1.Condition) string {
	if c := meta.FindStatusCondition(conds, "Ready"); c != nil && c.Status != metav1.ConditionTrue {
		return c.Message
	}
	return ""
}

var kindAbbrev = map[string]string{"Machine": "machine", "NixosConfiguration": "nixosconfiguration", "NixosFleet": "nixosfleet"}

func tableHeader(all bool) []string {
	h := []string{"NAME", "TARGET", "READY", "APPLIED", "LATEST", "TRANSPORT", "GEN", "REBOOT", "AGENT", "CERT", "LAST ERROR"}
	if all {
		h = append([]string{"NAMESPACE"}, h...)
	}
	return h
}

func tableRows(rows []row, all bool, now time.Time) [][]cell {
	var out [][]cell
	for _, r := range rows {
		ready := cell{text: r.Ready, colour: colourYellow}
		switch r.Ready {
		case "True":
			ready.colour = colourGreen
		case "False":
			ready.colour = colourRed
		}
		applied := cell{text: dash(short(r.AppliedCommit))}
		if r.LatestCommit != "" && r.AppliedCommit != r.LatestCommit {
			applied.colour = colourYellow
		}
		gen := "-"
		if r.Generation > 0 {
			gen = strconv.FormatInt(r.Generation, 10)
		}
		reboot := cell{text: "-"}
		if r.Kind == "Machine" {
			reboot.text = "no"
			if r.NeedsReboot {
				reboot = cell{text: "yes", colour: colourYellow}
			}
		}
		agent := cell{text: "-"}
		if r.Kind == "Machine" && r.Agent != "" {
			agent.text = r.Agent
			if !r.AgentUp {
				agent = cell{text: r.Agent + " (down)", colour: colourRed}
			}
		}
		cells := []cell{
			{text: kindAbbrev[r.Kind] + "/" + r.Name}, {text: dash(r.Target)}, ready, applied,
			{text: dash(short(r.LatestCommit))}, {text: dash(r.Transport)}, {text: gen}, reboot, agent,
			certCell(r.CertExpiry, now), {text: dash(oneLine(r.LastError, 80)), colour: errColour(r.LastError)},
		}
		if all {
			cells = append([]cell{{text: r.Namespace}}, cells...)
		}
		out = append(out, cells)
	}
	return out
}

// certCell says how long the agent's certificate has left: red when expired, yellow
// within 14 days (the operator renews at 2/3 of its life, a month before the end).
func certCell(notAfter *time.Time, now time.Time) cell {
	if notAfter == nil {
		return cell{text: "-"}
	}
	left := notAfter.Sub(now)
	switch {
	case left <= 0:
		return cell{text: "expired", colour: colourRed}
	case left < 48*time.Hour:
		return cell{text: fmt.Sprintf("%dh", int(left.Hours())), colour: colourYellow}
	case left < 14*24*time.Hour:
		return cell{text: fmt.Sprintf("%dd", int(left.Hours()/24)), colour: colourYellow}
	}
	return cell{text: fmt.Sprintf("%dd", int(left.Hours()/24))}
}

func errColour(msg string) string {
	if msg == "" {
		return colourNone
	}
	return colourRed
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine is the first line of s, at most n runes.
func oneLine(s string, n int) string {
	for i, r := range s {
		if r == '\n' {
			s = s[:i]
			break
		}
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
