package transport

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// roundTrip runs the quoted command through a real /bin/sh that prints each argument
// it received NUL-terminated, and returns what arrived.
func roundTrip(t testing.TB, argv []string) []string {
	t.Helper()
	line, err := shellCommand(append([]string{"printf", `%s\0`}, argv...))
	if err != nil {
		t.Fatalf("shellCommand(%q): %v", argv, err)
	}
	out, err := exec.Command("/bin/sh", "-c", line).Output()
	if err != nil {
		t.Fatalf("sh -c %q: %v", line, err)
	}
	got := strings.Split(string(out), "\x00")
	return got[:len(got)-1]
}

func TestShellCommandQuotesEachArgument(t *testing.T) {
	t.Parallel()
	cases := map[string][]string{
		"plain":        {"nixos-rebuild", "switch"},
		"empty":        {"", "a", ""},
		"injection":    {"x; rm -rf /", "$(touch /tmp/pwned)", "`id`", "a && b", "a | b"},
		"quotes":       {"it's", `"double"`, `'`, `''`, `'\''`},
		"globs":        {"*", "?", "[a-z]", "~", "~root"},
		"whitespace":   {"a b", "tab\there", "new\nline", " "},
		"expansions":   {"$HOME", "${PATH}", "$1", "!", "\\", "\\'"},
		"utf8 and hi":  {"héllo", "\xff\xfe"},
		"flake ref":    {"/var/lib/nio/ssh-src/op/.#x; rm -rf /"},
		"leading dash": {"-rf", "--", "-"},
	}
	for name, argv := range cases {
		t.Run(name, func(t *testing.T) {
			if got := roundTrip(t, argv); !slices.Equal(got, argv) {
				t.Fatalf("arrived %q, sent %q", got, argv)
			}
		})
	}
}

func TestShellCommandExactText(t *testing.T) {
	t.Parallel()
	got, err := shellCommand([]string{"sudo", "-n", "it's"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `'sudo' '-n' 'it'\''s'`; got != want {
		t.Fatalf("shellCommand = %s, want %s", got, want)
	}
}

func TestShellCommandRefusesNULAndEmpty(t *testing.T) {
	t.Parallel()
	if _, err := shellCommand([]string{"a\x00b"}); err == nil {
		t.Fatal("a NUL byte was accepted")
	}
	if _, err := shellCommand(nil); err == nil {
		t.Fatal("an empty argv was accepted")
	}
}

func FuzzShellCommand(f *testing.F) {
	for _, s := range []string{"", "x; rm -rf /", "'", `'\''`, "$(id)", "a\nb", "\\"} {
		f.Add(s, "second")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		argv := []string{a, b}
		if bytes.IndexByte([]byte(a+b), 0) >= 0 {
			if _, err := shellCommand(argv); err == nil {
				t.Fatal("NUL accepted")
			}
			return
		}
		if got := roundTrip(t, argv); !slices.Equal(got, argv) {
			t.Fatalf("arrived %q, sent %q", got, argv)
		}
	})
}
