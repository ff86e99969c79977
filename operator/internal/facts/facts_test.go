package facts

import (
	"github.com/homystack/nio/testkit/facterfixture"
	"strings"
	"testing"
)

func TestSummarizeRealReport(t *testing.T) {
	data := facterfixture.Report
	s, err := Summarize(data)
	if err != nil {
		t.Fatal(err)
	}
	if s.System != "x86_64-linux" || s.Virtualisation != "kvm" || s.CPUs != 2 || s.MemoryBytes != 4026531840 {
		t.Errorf("summary = %+v, want x86_64-linux, kvm, 2 logical CPUs, 4026531840 bytes", s)
	}
}

func TestSummarizeRefusesWhatIsNotAReport(t *testing.T) {
	for name, data := range map[string]string{
		"garbage":    "Segmentation fault",
		"not object": `[1,2,3]`,
		"no version": `{"system":"x86_64-linux"}`,
		"too big":    `{"version":1,"system":"x","pad":"` + strings.Repeat("x", MaxReportBytes) + `"}`,
	} {
		if _, err := Summarize([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
