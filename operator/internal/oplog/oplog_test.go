package oplog

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

var key = types.NamespacedName{Namespace: "ns", Name: "web"}

func TestOperationKeepsOnlyItsLastBytes(t *testing.T) {
	s := NewStore(10 * (entryOverhead + 100))
	op := s.Begin(key, Info{ID: "op-1"})
	op.Phase("Building", "")
	line := strings.Repeat("x", 100)
	for range 1000 {
		op.Line(line)
	}
	entries, info, _ := op.Read(0)
	if len(entries) > 10 || len(entries) < 9 {
		t.Fatalf("kept %d entries, want about 10", len(entries))
	}
	if info.Dropped+uint64(len(entries)) != 1001 {
		t.Fatalf("dropped %d + kept %d != 1001 written", info.Dropped, len(entries))
	}
	if last := entries[len(entries)-1]; last.Seq != 1001 || last.Phase != "Building" {
		t.Fatalf("last entry %+v, want seq 1001 in phase Building", last)
	}
	if cap(op.entries) > 4*len(entries)+16 {
		t.Fatalf("backing array holds %d entries for %d kept", cap(op.entries), len(entries))
	}
}

func TestANewOperationMakesTheCurrentOneThePrevious(t *testing.T) {
	s := NewStore(0)
	first := s.Begin(key, Info{ID: "op-1"})
	first.Line("one")
	if again := s.Begin(key, Info{ID: "op-1"}); again != first {
		t.Fatal("the same operation id started a new log (an attach must continue it)")
	}
	second := s.Begin(key, Info{ID: "op-2"})
	second.Line("two")
	if s.Get(key, false) != second || s.Get(key, true) != first {
		t.Fatal("current/previous are not the second/first operation")
	}
	if info := first.Info(); !info.Ended || info.Outcome != "Superseded" {
		t.Fatalf("the replaced operation's info %+v, want ended Superseded", info)
	}
	third := s.Begin(key, Info{ID: "op-3"})
	if s.Get(key, true) != second || s.Get(key, false) != third {
		t.Fatal("only the current and the previous operation are kept")
	}
	s.Forget(key)
	if s.Get(key, false) != nil {
		t.Fatal("a forgotten configuration still has a log")
	}
}

func TestReadAfterReturnsOnlyNewEntriesAndSignalsChanges(t *testing.T) {
	op := NewStore(0).Begin(key, Info{ID: "op-1"})
	op.Line("a")
	got, _, changed := op.Read(0)
	if len(got) != 1 {
		t.Fatalf("got %d entries", len(got))
	}
	op.Line("b")
	select {
	case <-changed:
	default:
		t.Fatal("a new line did not close the change channel")
	}
	got, _, changed = op.Read(got[0].Seq)
	if len(got) != 1 || got[0].Line != "b" {
		t.Fatalf("after seq 1: %+v, want only b", got)
	}
	op.End("Succeeded", "")
	<-changed
	if _, info, _ := op.Read(2); !info.Ended || info.Outcome != "Succeeded" {
		t.Fatalf("info %+v", info)
	}
}

func TestANilStoreKeepsNothing(t *testing.T) {
	var s *Store
	op := s.Begin(key, Info{ID: "x"})
	op.Phase("Building", "")
	op.Line("ignored")
	op.End("Succeeded", "")
	if s.Get(key, false) != nil {
		t.Fatal("nil store returned a log")
	}
}
