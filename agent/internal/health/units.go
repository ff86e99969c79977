package health

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// systemctlTimeout bounds one systemctl query.
const systemctlTimeout = 30 * time.Second

// FailedUnits is a sorted set of unit names that were failed, taken before
// activation so NoNewFailures ignores what was broken already. It is plain data: the
// agent can journal it and use it again after a restart. nil and empty both mean
// that no unit was failed.
type FailedUnits []string

// Has reports whether unit is in the set (sorted or not: a journaled copy may have
// been edited by hand).
func (f FailedUnits) Has(unit string) bool {
	return slices.Contains(f, unit)
}

// Baseline lists the units failed now. The caller takes it before activating, and
// keeps it for Run.
func (c *Checker) Baseline(ctx context.Context) (FailedUnits, error) {
	return c.failedUnits(ctx)
}

func (c *Checker) failedUnits(ctx context.Context) (FailedUnits, error) {
	// --full: a unit name ellipsized to the terminal's width would never match.
	out, err := c.query(ctx, "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager", "--full")
	if err != nil {
		return nil, err
	}
	return parseFailedUnits(out), nil
}

// query runs systemctl with args and returns its stdout.
func (c *Checker) query(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, systemctlTimeout)
	defer cancel()
	var stdout, stderr tailBuffer
	argv := append([]string{c.systemctl()}, args...)
	if err := runGroup(ctx, argv, &stdout, &stderr); err != nil {
		if msg := lastLines(stderr.Bytes(), 2); msg != "" {
			return nil, fmt.Errorf("systemctl %s: %w: %s", args[0], err, msg)
		}
		return nil, fmt.Errorf("systemctl %s: %w", args[0], err)
	}
	if stdout.truncated {
		return nil, fmt.Errorf("systemctl %s printed more than %d bytes", args[0], maxOutput)
	}
	return stdout.Bytes(), nil
}

// unitSuffixes are systemd's unit types; a list-units line names its unit first.
var unitSuffixes = []string{".service", ".socket", ".target", ".device", ".mount", ".automount",
	".swap", ".timer", ".path", ".slice", ".scope"}

// parseFailedUnits reads `systemctl list-units --plain --no-legend` output: the first
// field of each line is a unit, possibly behind a status mark ("●", "*", "×") when a
// systemd ignores --plain. Lines that do not start with a unit name (a legend, a
// header, a blank line) are skipped.
func parseFailedUnits(out []byte) FailedUnits {
	var units FailedUnits
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for len(fields) > 0 && strings.Trim(fields[0], "●*×") == "" {
			fields = fields[1:]
		}
		if len(fields) == 0 || !isUnitName(fields[0]) {
			continue
		}
		units = append(units, fields[0])
	}
	slices.Sort(units)
	return slices.Compact(units)
}

func isUnitName(s string) bool {
	for _, suf := range unitSuffixes {
		if len(s) > len(suf) && strings.HasSuffix(s, suf) {
			return true
		}
	}
	return false
}

// unitState is what `systemctl show` says about one unit.
type unitState struct {
	ID, Load, Active, Sub, Result string
}

func (u unitState) active() bool {
	switch u.Active {
	case "active", "reloading", "refreshing":
		return true
	}
	return false
}

func (u unitState) String() string {
	if u.Load == "not-found" {
		return "not found"
	}
	s := u.Active
	if u.Sub != "" && u.Sub != u.Active {
		s += " (" + u.Sub + ")"
	}
	if u.Result != "" && u.Result != "success" {
		s += ", result " + u.Result
	}
	return s
}

// parseShow reads `systemctl show -p …` for several units: one block of key=value
// lines per unit, in the order they were named, blocks separated by blank lines.
func parseShow(out []byte) []unitState {
	var states []unitState
	var cur *unitState
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			cur = nil
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if cur == nil {
			states = append(states, unitState{})
			cur = &states[len(states)-1]
		}
		switch k {
		case "Id":
			cur.ID = v
		case "LoadState":
			cur.Load = v
		case "ActiveState":
			cur.Active = v
		case "SubState":
			cur.Sub = v
		case "Result":
			cur.Result = v
		}
	}
	return states
}

// checkUnits runs one attempt of a units check.
func (c *Checker) checkUnits(ctx context.Context, u *UnitsCheck, baseline FailedUnits) (bool, string) {
	var problems, good []string
	if len(u.Units) > 0 {
		args := append([]string{"show", "--no-pager", "--property=Id,LoadState,ActiveState,SubState,Result", "--"}, u.Units...)
		out, err := c.query(ctx, args...)
		if err != nil {
			return false, err.Error()
		}
		states := parseShow(out)
		if len(states) != len(u.Units) {
			return false, fmt.Sprintf("systemctl show described %d units for the %d asked about", len(states), len(u.Units))
		}
		var down []string
		for i, st := range states {
			if !st.active() {
				down = append(down, u.Units[i]+" is "+st.String())
			}
		}
		if len(down) > 0 {
			problems = append(problems, strings.Join(down, ", "))
		} else {
			good = append(good, "active: "+strings.Join(u.Units, ", "))
		}
	}
	if u.NoNewFailures {
		failed, err := c.failedUnits(ctx)
		if err != nil {
			return false, err.Error()
		}
		var added []string
		for _, f := range failed {
			if !baseline.Has(f) {
				added = append(added, f)
			}
		}
		if len(added) > 0 {
			problems = append(problems, "failed since activation: "+strings.Join(added, ", "))
		} else {
			good = append(good, "no unit failed since activation")
		}
	}
	if len(problems) > 0 {
		return false, strings.Join(problems, "; ")
	}
	return true, strings.Join(good, "; ")
}
