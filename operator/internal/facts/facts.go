// Package facts reads nixos-facter reports: it checks a report is one, and summarises
// what a person wants at a glance in a Machine's status.
package facts

import (
	"encoding/json"
	"errors"
	"fmt"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// MaxReportBytes bounds a report: it is kept in a ConfigMap (1 MiB at most).
const MaxReportBytes = 1000 * 1024

type report struct {
	Version        *int   `json:"version"`
	System         string `json:"system"`
	Virtualisation string `json:"virtualisation"`
	Hardware       struct {
		CPU []struct {
			PhysicalID *int `json:"physical_id"`
			Siblings   int  `json:"siblings"`
		} `json:"cpu"`
		Memory []struct {
			Resources []struct {
				Type  string `json:"type"`
				Range int64  `json:"range"`
			} `json:"resources"`
		} `json:"memory"`
	} `json:"hardware"`
}

// Summarize checks that data is a nixos-facter report and returns its summary
// (without ReportConfigMap, which the caller sets).
func Summarize(data []byte) (nio.FactsSummary, error) {
	if len(data) > MaxReportBytes {
		return nio.FactsSummary{}, fmt.Errorf("nixos-facter report is %d bytes, more than the %d a ConfigMap holds", len(data), MaxReportBytes)
	}
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		return nio.FactsSummary{}, fmt.Errorf("nixos-facter report is not JSON: %w", err)
	}
	if r.Version == nil || r.System == "" {
		return nio.FactsSummary{}, errors.New("nixos-facter report lacks version or system")
	}
	s := nio.FactsSummary{System: r.System, Virtualisation: r.Virtualisation}
	if s.Virtualisation == "" {
		s.Virtualisation = "none"
	}
	// hwinfo lists CPUs per package or per thread depending on the platform: count
	// logical CPUs as the siblings of each distinct package.
	packages := map[int]int{}
	for i, c := range r.Hardware.CPU {
		id := -1 - i
		if c.PhysicalID != nil {
			id = *c.PhysicalID
		}
		packages[id] = max(packages[id], c.Siblings, 1)
	}
	for _, n := range packages {
		s.CPUs += int32(n)
	}
	for _, m := range r.Hardware.Memory {
		for _, res := range m.Resources {
			if res.Type == "phys_mem" {
				s.MemoryBytes += res.Range
			}
		}
	}
	return s, nil
}
