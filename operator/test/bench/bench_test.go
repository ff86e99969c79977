package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseMetricsSumsEverySeriesOfAName(t *testing.T) {
	text := `# HELP rest_client_requests_total Number of HTTP requests.
# TYPE rest_client_requests_total counter
rest_client_requests_total{code="200",host="127.0.0.1:6443",method="GET"} 12
rest_client_requests_total{code="201",host="127.0.0.1:6443",method="POST"} 3
controller_runtime_reconcile_total{controller="nixosconfiguration",result="success"} 4
controller_runtime_reconcile_total{controller="nixosconfiguration",result="requeue_after"} 6
process_cpu_seconds_total 1.5
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := m["rest_client_requests_total"]; got != 15 {
		t.Errorf("rest_client_requests_total = %v, want 15", got)
	}
	if got := m["controller_runtime_reconcile_total"]; got != 10 {
		t.Errorf("controller_runtime_reconcile_total = %v, want 10", got)
	}
	if got := m[`controller_runtime_reconcile_total{controller="nixosconfiguration",result="requeue_after"}`]; got != 6 {
		t.Errorf("reconcile series by labels = %v, want 6", got)
	}
	if got := m["process_cpu_seconds_total"]; got != 1.5 {
		t.Errorf("unlabelled metric = %v, want 1.5", got)
	}
}

func TestSpreadPercentiles(t *testing.T) {
	d := make([]float64, 100)
	for i := range d {
		d[99-i] = float64(i + 1) // unsorted on purpose
	}
	s := spread(d)
	if s.P50 != 50 || s.P95 != 95 || s.Max != 100 {
		t.Fatalf("spread of 1..100 = %+v, want p50 50, p95 95, max 100", s)
	}
	if one := spread([]float64{3}); one.P50 != 3 || one.Max != 3 {
		t.Fatalf("spread of one value = %+v", one)
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{5, 1, 3}); m != 3 {
		t.Errorf("median of 5 1 3 = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of 4 1 3 2 = %v", m)
	}
}

// Batches are timed from their first move to their last Machine done, in start
// order, each against ceil(size / concurrency) × build time + health check time.
func TestBatchTimingsAgainstTheFloor(t *testing.T) {
	t0 := time.Unix(1000, 0)
	moved, batchOf, doneAt := map[string]time.Time{}, map[string]string{}, map[string]float64{}
	for i := range 5 {
		name, batch := fmt.Sprintf("m%d", i), "1"
		at, done := 0.5+float64(i)*0.1, 3.0+float64(i)
		if i >= 3 {
			batch, at, done = "2", 8+float64(i-3), 12
		}
		moved[name], batchOf[name], doneAt[name] = t0.Add(time.Duration(at*float64(time.Second))), batch, done
	}
	fr, err := batchTimings(doneAt, t0, moved, batchOf, 2, 2*time.Second, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(fr.Batches) != 2 {
		t.Fatalf("batches %+v, want 2", fr.Batches)
	}
	b1, b2 := fr.Batches[0], fr.Batches[1]
	if b1.Name != "1" || b1.Size != 3 || b1.Start != 0.5 || b1.End != 5 || b1.FloorSeconds != 4.1 || b1.GapSeconds != 0.5 {
		t.Errorf("batch 1 = %+v, want 3 Machines from 0.5 s to 5 s, floor ceil(3/2) × 2 s + 0.1 s = 4.1 s, gap 0.5 s", b1)
	}
	if b2.Name != "2" || b2.Size != 2 || b2.Start != 8 || b2.End != 12 || b2.Seconds != 4 || b2.FloorSeconds != 2.1 || b2.GapSeconds != 3 {
		t.Errorf("batch 2 = %+v, want 2 Machines from 8 s to 12 s, floor 2.1 s, gap 3 s", b2)
	}
	if math.Abs(fr.FloorSeconds-6.2) > 1e-9 {
		t.Errorf("floor %v, want 6.2", fr.FloorSeconds)
	}
	delete(doneAt, "m4")
	if _, err := batchTimings(doneAt, t0, moved, batchOf, 2, 2*time.Second, 0); err == nil {
		t.Error("a Machine moved and never done: no error")
	}
}
